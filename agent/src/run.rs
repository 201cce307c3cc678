//! `l2announcer run`: opens the state database, serves the local API on a
//! unix socket (mode 0600) and keeps running until SIGTERM or SIGINT, then
//! shuts down cleanly and exits 0.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::api::{self, ApiState};
use crate::config::{Config, LogFormat};

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

/// Runs the agent until a termination signal; returns when shut down.
pub fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
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
        info!(
            node = %config.node_name,
            socket = %config.api_socket.display(),
            db = %config.db_path().display(),
            "agent started"
        );

        let signal_name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal = signal_name, "shutting down");
        let _ = stop_tx.send(true);
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "API server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "API server task failed"),
        }
        db.flush().context("flushing state database")?;
        let _ = std::fs::remove_file(&config.api_socket);
        info!("agent stopped");
        Ok(())
    })
}
