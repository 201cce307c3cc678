//! `l2announcer run`: opens the state database, serves the local API on a
//! unix socket (mode 0600) and keeps running until SIGTERM or SIGINT, then
//! shuts down cleanly and exits 0.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use actors::announce::{AnnouncerOptions, GratuitousConfig, SocketSender};
use actors::control_plane::{
    ControlPlane, Devices, Observers, start_devices, start_pod_announcements,
};
use actors::k8s::client as kubeclient;
use actors::k8s::events::{Fanout, ServiceEvents};
use actors::k8s::status::ServiceStatus;
use actors::lease::LeaseTiming;
use actors::pods::PodConfig;
use bpf::{AttachMode, Responder, ResponderConfig};

use anyhow::Context as _;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::api::{self, ApiState};
use crate::config::{Config, LogFormat, ResponderMode};
use crate::metrics::{self, Metrics};

/// Sets up logging as configured; safe to call once per process.
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Binds the API socket with mode 0600, replacing a stale socket file left
/// by a previous run (the database lock already proved no agent is alive).
fn bind_api_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    // The umask closes the window between bind() and chmod() in which the
    // socket would be reachable by others.
    // SAFETY: umask only swaps the process file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode of {}", path.display()))?;
    Ok(listener)
}

/// The one Kubernetes client, created on the System arbiter, and its
/// token bucket.
async fn kube_client(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(kube::Client, kubeclient::ClientBudget)> {
    let kube_config = kubeclient::load_config(config.k8s_kubeconfig_path.as_deref())
        .await
        .context("loading the Kubernetes client configuration")?;
    Ok(kubeclient::build_client_with_budget(
        kube_config,
        &config.node_name,
        config.k8s_client_qps,
        config.k8s_client_burst,
        metrics.clone(),
    )?)
}

/// What `--enable-l2-pod-announcements` starts, when it is on.
fn pod_config(config: &Config) -> Option<PodConfig> {
    config.enable_l2_pod_announcements.then(|| PodConfig {
        node: config.node_name.clone(),
        interface: config.l2_pod_announcements_interface.clone(),
        gratuitous: gratuitous_config(config),
    })
}

fn gratuitous_config(config: &Config) -> GratuitousConfig {
    GratuitousConfig {
        count: config.l2_gratuitous_count,
        interval: config.l2_gratuitous_interval,
    }
}

/// Starts device tracking, with `--enable-l2-announcements` the datapath
/// and the control plane, and with `--enable-l2-pod-announcements` the pod
/// announcements (inside the control plane, or alone). `None` when no
/// control plane runs.
async fn start_actors(
    config: &Config,
    db: &statedb::Db,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<ControlPlane>> {
    let devices = Devices::Netlink(config.devices.clone());
    if !config.enable_l2_announcements {
        start_devices(db, devices, None)?;
        match pod_config(config) {
            Some(pods) => {
                let (client, _) = kube_client(config, metrics).await?;
                start_pod_announcements(
                    client,
                    db,
                    pods,
                    Box::new(SocketSender::default()),
                    metrics.clone(),
                )?;
                info!(
                    "L2 announcements disabled (--enable-l2-announcements=false): tracking devices and announcing pods only"
                );
            }
            None => info!(
                "L2 announcements disabled (--enable-l2-announcements=false): tracking devices only"
            ),
        }
        return Ok(None);
    }

    // The datapath first: a restarted agent keeps answering from the pinned
    // maps, under the fences the previous run gave them, until this run
    // confirms or gives up each claim.
    let responder = Responder::open(&ResponderConfig {
        pin_dir: config.bpf_root.clone(),
        max_liveness: config.max_liveness_age(),
    })
    .with_context(|| {
        format!(
            "loading the eBPF responder (pins in {})",
            config.bpf_root.display()
        )
    })?;
    let mode = match config.l2_responder_mode {
        ResponderMode::Tc => AttachMode::Tc,
        ResponderMode::Xdp => AttachMode::Xdp,
    };

    // One Kubernetes client, created here on the System arbiter.
    let (client, budget) = kube_client(config, metrics).await?;
    let timing = LeaseTiming {
        lease_duration: config.lease_duration,
        renew_deadline: config.renew_deadline,
        retry_period: config.retry_period,
    };
    // Events and the Service condition share a small budget that leaves
    // the client's burst to heartbeats, renewals and record writes.
    let background = kubeclient::Background::new(config.k8s_client_qps, Some(budget.clone()));
    let observers = Observers {
        lease: metrics.clone(),
        announce: Arc::new(Fanout(vec![
            metrics.clone(),
            ServiceEvents::start(client.clone(), &config.node_name, background.clone()),
            ServiceStatus::start(client.clone(), &config.node_name, background),
        ])),
        policy: metrics.clone(),
        datapath: metrics.clone(),
        pods: metrics.clone(),
    };
    let mut builder = ControlPlane::builder(
        client,
        db.clone(),
        &config.node_name,
        &config.k8s_namespace,
        timing,
    )
    .election(config.l2_announcements_election.into())
    .external_ips(config.enable_external_ips)
    .client_qps(config.k8s_client_qps)
    .client_budget(budget)
    .devices(devices)
    .observers(observers);
    if let Some(pods) = pod_config(config) {
        builder = builder.pod_announcements(pods.interface);
    }
    let control_plane = builder.start(
        responder,
        SocketSender::default(),
        AnnouncerOptions {
            mode,
            gratuitous: gratuitous_config(config),
            liveness_interval: config.agent_liveness_update_interval,
            node_fence: false,
        },
    )?;
    Ok(Some(control_plane))
}

/// How often the agent hands free heap pages back (see
/// [`give_back_freed_memory`]).
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Every [`TRIM_INTERVAL`], hands the heap's free pages back to the kernel:
/// the peaks of a mass change (thousands of Services listed, records
/// decoded) would otherwise stay in the agent's RSS for good. glibc frees
/// only the top of the heap by itself; a trim also releases whole free
/// pages inside it (a few ms for a heap of 100 MiB).
fn give_back_freed_memory() {
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(TRIM_INTERVAL);
                // SAFETY: malloc_trim only releases free memory of the
                // allocator's own arenas.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "not starting the memory trimmer");
    }
}

/// Runs the agent until a termination signal; returns when shut down.
pub fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    give_back_freed_memory();
    let system = actix_rt::System::new();
    system.block_on(async move {
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
        let db = crate::tables::open(&config.db_path())
            .with_context(|| format!("opening state database {}", config.db_path().display()))?;

        let listener = bind_api_socket(&config.api_socket)?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let state = ApiState::new(config.clone(), db.clone(), stop_rx);
        let server = tokio::spawn(api::serve(listener, state));
        let metrics = Arc::new(Metrics::new().context("registering metrics")?);
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let metrics_server = match config.prometheus_serve_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding --prometheus-serve-addr {addr}"))?;
                Some(tokio::spawn(metrics::serve_listener(
                    listener,
                    metrics.clone(),
                    ready.clone(),
                    stop_tx.subscribe(),
                )))
            }
            None => None,
        };
        let started = start_actors(&config, &db, &metrics).await?;
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        info!(
            node = %config.node_name,
            socket = %config.api_socket.display(),
            db = %config.db_path().display(),
            l2_announcements = config.enable_l2_announcements,
            l2_pod_announcements = config.enable_l2_pod_announcements,
            "agent started"
        );

        let signal_name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal = signal_name, "shutting down");
        // Fences closed, then leases released, so that another node takes
        // over at once and never alongside this one.
        if let Some(control_plane) = started {
            control_plane.shutdown(RELEASE_TIMEOUT).await;
        }
        let _ = stop_tx.send(true);
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "API server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "API server task failed"),
        }
        if let Some(m) = metrics_server {
            match m.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "metrics server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "metrics server task failed"),
            }
        }
        db.flush().context("flushing state database")?;
        let _ = std::fs::remove_file(&config.api_socket);
        info!("agent stopped");
        actix_rt::System::current().stop();
        Ok(())
    })
}

/// How long shutdown waits for lease releases.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
