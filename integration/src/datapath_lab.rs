//! The agent's datapath code path, run in-process inside a network
//! namespace: [`InProcessAgent`] starts a thread that enters the namespace
//! and runs an actix System with the device tracking (netlink into the
//! `devices` table) and the announcer over a temporary statedb — both
//! started as the agent starts them ([`actors::control_plane`]) — with the
//! eBPF responder pinned in a fresh bpffs directory. Tests play the parts
//! of the ServiceActor (rows in `l2-announce`) and of the elections
//! (opening and closing fences), and read the pinned maps from the side.
//!
//! It is not the agent binary: no Kubernetes, no CLI, no local API.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::actors::RunId;
use ::actors::announce::{
    AnnouncerGone, AnnouncerOptions, Fences, GratuitousConfig, NoDatapathObserver, SocketSender,
};
use ::actors::control_plane::{DatapathTask, Devices, start_devices};
use ::actors::devices::{DEVICES, DeviceFilter, DeviceRow};
use ::actors::tables::{L2_ANNOUNCE, L2AnnounceRow, announce_key};
use bpf::{AttachMode, PinnedMaps, Responder, ResponderConfig, ResponderEntry};
use statedb::{Status, Table};

use crate::netns::{Netns, NetnsError, unique_name};
use crate::poll::{WaitError, wait_for};

/// Why the in-process agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Responder(#[from] bpf::ResponderError),
    #[error(transparent)]
    Statedb(#[from] statedb::Error),
    #[error(transparent)]
    Announcer(#[from] AnnouncerGone),
    #[error("mounting bpffs at /sys/fs/bpf: {0}")]
    Bpffs(String),
    #[error("agent thread: {0}")]
    Thread(String),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error("the agent is stopped")]
    Stopped,
}

/// How the in-process agent runs.
#[derive(Debug, Clone, Copy)]
pub struct AgentConfig {
    /// Maximum liveness age the datapath accepts.
    pub max_liveness: Duration,
    /// How often the announcer refreshes liveness.
    pub liveness_interval: Duration,
    pub gratuitous: GratuitousConfig,
    pub mode: AttachMode,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_liveness: Duration::from_secs(15),
            liveness_interval: Duration::from_secs(1),
            gratuitous: GratuitousConfig::default(),
            mode: AttachMode::Tc,
        }
    }
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there.
pub fn ensure_bpffs() -> Result<(), AgentError> {
    let root = Path::new("/sys/fs/bpf");
    if bpf::is_on_bpffs(root).map_err(|e| AgentError::Bpffs(e.to_string()))? {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .map_err(|e| AgentError::Bpffs(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(AgentError::Bpffs(format!("mount exited with {status}")))
    }
}

/// The agent's datapath running in a namespace. Dropping it stops it and
/// removes the pinned maps and links.
pub struct InProcessAgent {
    db: statedb::Db,
    rows: Table<L2AnnounceRow>,
    devices: Table<DeviceRow>,
    run: RunId,
    fences: Fences,
    maps: PinnedMaps,
    system: Option<actix::System>,
    thread: Option<JoinHandle<()>>,
    pin_dir: PathBuf,
    ns_name: String,
    ns_path: PathBuf,
    config: AgentConfig,
}

impl std::fmt::Debug for InProcessAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessAgent")
            .field("pin_dir", &self.pin_dir)
            .field("running", &self.system.is_some())
            .finish_non_exhaustive()
    }
}

/// Removes the pins when the start fails half-way.
struct PinGuard(Option<PathBuf>);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && let Err(e) = Responder::remove_pins(&dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing pins");
        }
    }
}

type Started = Result<(Fences, actix::System), String>;

impl InProcessAgent {
    /// Opens the responder under `/sys/fs/bpf/l2a-dp-<pid>-<n>`, starts the
    /// actors in `ns` and waits until the `devices` table lists every
    /// interface in `wait_devices`.
    pub fn start(
        ns: &Netns,
        config: AgentConfig,
        wait_devices: &[&str],
    ) -> Result<InProcessAgent, AgentError> {
        ensure_bpffs()?;
        let pin_dir = Path::new("/sys/fs/bpf").join(unique_name("l2a-dp"));
        let mut guard = PinGuard(Some(pin_dir.clone()));
        let db = statedb::Db::open_temporary()?;
        let run = RunId::new();
        let (fences, system, thread) =
            spawn_agent(ns.name(), &ns.path(), &pin_dir, &db, &run, config)?;
        let maps = PinnedMaps::open(&pin_dir)?;
        guard.0 = None;
        let agent = InProcessAgent {
            rows: Table::open(&db, L2_ANNOUNCE)?,
            devices: Table::open(&db, DEVICES)?,
            db,
            run,
            fences,
            maps,
            system: Some(system),
            thread: Some(thread),
            pin_dir,
            ns_name: ns.name().to_string(),
            ns_path: ns.path(),
            config,
        };
        for name in wait_devices {
            agent.wait_device(name, Duration::from_secs(10))?;
        }
        Ok(agent)
    }

    /// Kills the agent (as [`Self::stop`]) and starts a new run over the
    /// same state database and pinned maps, as a restarted agent process:
    /// rows and entries of the previous run are inherited.
    pub fn restart(&mut self) -> Result<(), AgentError> {
        self.stop();
        self.run = RunId::new();
        let (fences, system, thread) = spawn_agent(
            &self.ns_name,
            &self.ns_path,
            &self.pin_dir,
            &self.db,
            &self.run,
            self.config,
        )?;
        self.fences = fences;
        self.system = Some(system);
        self.thread = Some(thread);
        Ok(())
    }

    pub fn db(&self) -> &statedb::Db {
        &self.db
    }

    /// The bpffs directory of the responder.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Waits until the `devices` table has a row for `name`.
    pub fn wait_device(&self, name: &str, timeout: Duration) -> Result<DeviceRow, AgentError> {
        Ok(wait_for(
            &format!("device {name} in the table"),
            timeout,
            || {
                self.devices
                    .get(&self.db, DEVICES.primary, name)
                    .ok()
                    .flatten()
                    .map(|e| e.row)
            },
        )?)
    }

    /// Writes a pending `l2-announce` row of this run, as the ServiceActor
    /// does, under the claim of its first origin.
    pub fn upsert(&self, ip: IpAddr, interface: &str, origins: &[&str]) -> Result<(), AgentError> {
        let mut origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        origins.sort();
        self.write_row(L2AnnounceRow {
            ip,
            network_interface: interface.to_string(),
            claim: origins.first().cloned().unwrap_or_default(),
            origins,
            run: self.run.as_str().to_string(),
            status: Status::Pending,
        })
    }

    /// Writes `row` as it is (e.g. a row of another run).
    pub fn write_row(&self, row: L2AnnounceRow) -> Result<(), AgentError> {
        let mut txn = self.db.write_txn();
        self.rows.insert(&mut txn, row)?;
        txn.commit()?;
        Ok(())
    }

    /// This agent's run.
    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    /// Deletes the row of (`ip`, `interface`); whether there was one.
    pub fn remove(&self, ip: IpAddr, interface: &str) -> Result<bool, AgentError> {
        let mut txn = self.db.write_txn();
        let Some(entry) = self.rows.get(
            &txn,
            L2_ANNOUNCE.primary,
            announce_key(ip, interface).as_str(),
        )?
        else {
            return Ok(false);
        };
        self.rows.delete(&mut txn, &entry.row)?;
        txn.commit()?;
        Ok(true)
    }

    /// The current row of (`ip`, `interface`).
    pub fn row(&self, ip: IpAddr, interface: &str) -> Result<Option<L2AnnounceRow>, AgentError> {
        Ok(self
            .rows
            .get(
                &self.db,
                L2_ANNOUNCE.primary,
                announce_key(ip, interface).as_str(),
            )?
            .map(|e| e.row))
    }

    /// Waits until the row's status satisfies `accept`; returns the row.
    pub fn wait_status(
        &self,
        ip: IpAddr,
        interface: &str,
        timeout: Duration,
        accept: impl Fn(&Status) -> bool,
    ) -> Result<L2AnnounceRow, AgentError> {
        let mut last = None;
        wait_for(&format!("status of {ip} on {interface}"), timeout, || {
            let row = self.row(ip, interface).ok().flatten()?;
            let ok = accept(&row.status);
            last = Some(row.status.to_string());
            ok.then_some(row)
        })
        .map_err(|e| match (e, last) {
            (WaitError::Timeout { what, after }, Some(s)) => WaitError::Timeout {
                what: format!("{what} (last: {s})"),
                after,
            }
            .into(),
            (e, _) => e.into(),
        })
    }

    /// Opens (or extends) `claim`'s fence until `until`, as an election
    /// does on a renewal; returns once the datapath holds it.
    pub fn open_fence(&self, claim: &str, until: Instant) -> Result<(), AgentError> {
        if self.system.is_none() {
            return Err(AgentError::Stopped);
        }
        futures::executor::block_on(self.fences.opened(claim, until))?;
        Ok(())
    }

    /// Closes `claim`'s fence; returns once the datapath holds it closed.
    pub fn close_fence(&self, claim: &str) -> Result<(), AgentError> {
        if self.system.is_none() {
            return Err(AgentError::Stopped);
        }
        futures::executor::block_on(self.fences.close(claim))?;
        Ok(())
    }

    /// The responder's map entry for `ip` on `ifindex`, if any.
    pub fn entry(&self, ip: IpAddr, ifindex: u32) -> Result<Option<ResponderEntry>, AgentError> {
        Ok(self
            .maps
            .entries()?
            .into_iter()
            .find(|e| e.ip == ip && e.ifindex == ifindex))
    }

    /// Every responder map entry.
    pub fn entries(&self) -> Result<Vec<ResponderEntry>, AgentError> {
        Ok(self.maps.entries()?)
    }

    /// `lease_fence[slot]` (CLOCK_MONOTONIC ns).
    pub fn fence_ns(&self, slot: u32) -> Result<u64, AgentError> {
        Ok(self.maps.fence(slot)?)
    }

    /// `agent_liveness[0]` (CLOCK_MONOTONIC ns).
    pub fn liveness_ns(&self) -> Result<u64, AgentError> {
        Ok(self.maps.liveness()?)
    }

    /// Interfaces the responder is attached to (pinned links).
    pub fn attached(&self) -> Result<Vec<bpf::AttachedLink>, AgentError> {
        Ok(self.maps.attached()?)
    }

    /// Stops the announcer and device tracking, as if the agent died: the
    /// pinned program and maps stay and keep answering until liveness or
    /// the fences run out. Map reads keep working.
    pub fn stop(&mut self) {
        if let Some(system) = self.system.take() {
            system.stop();
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("agent thread panicked");
        }
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = Responder::remove_pins(&self.pin_dir) {
            tracing::warn!(dir = %self.pin_dir.display(), error = %e, "removing pins");
        }
    }
}

/// Opens the responder on `pin_dir` and starts the agent thread in the
/// namespace; waits until it runs.
fn spawn_agent(
    ns_name: &str,
    ns_path: &Path,
    pin_dir: &Path,
    db: &statedb::Db,
    run: &RunId,
    config: AgentConfig,
) -> Result<(Fences, actix::System, JoinHandle<()>), AgentError> {
    let responder = Responder::open(&ResponderConfig {
        pin_dir: pin_dir.to_owned(),
        max_liveness: config.max_liveness,
    })?;
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Started>();
    let thread = {
        let db = db.clone();
        let run = run.clone();
        let ns_path = ns_path.to_owned();
        let ns_name = ns_name.to_string();
        std::thread::Builder::new()
            .name(format!("agent-{ns_name}"))
            .spawn(move || agent_thread(&ns_name, &ns_path, db, run, responder, config, started_tx))
            .map_err(|e| AgentError::Thread(e.to_string()))?
    };
    match started_rx.recv() {
        Ok(Ok((fences, system))) => Ok((fences, system, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(AgentError::Thread(e))
        }
        Err(_) => {
            let _ = thread.join();
            Err(AgentError::Thread("exited before starting".into()))
        }
    }
}

fn agent_thread(
    ns_name: &str,
    ns_path: &Path,
    db: statedb::Db,
    run: RunId,
    responder: Responder,
    config: AgentConfig,
    started: std::sync::mpsc::Sender<Started>,
) {
    let entered = crate::netns::enter_path(ns_name, ns_path);
    if let Err(e) = entered {
        let _ = started.send(Err(e.to_string()));
        return;
    }
    let system = actix::System::new();
    let result = system.block_on(async move {
        let datapath = DatapathTask::start(
            &db,
            run,
            responder,
            SocketSender::default(),
            AnnouncerOptions {
                mode: config.mode,
                gratuitous: config.gratuitous,
                liveness_interval: config.liveness_interval,
                node_fence: false,
            },
            std::sync::Arc::new(NoDatapathObserver),
        )?;
        start_devices(&db, Devices::Netlink(DeviceFilter::all()), None)?;
        Ok::<_, ::actors::ControlPlaneError>(datapath)
    });
    match result {
        Ok(datapath) => {
            let sent = started.send(Ok((datapath.fences.clone(), actix::System::current())));
            if sent.is_err() {
                return;
            }
            if let Err(e) = system.run() {
                tracing::error!(error = %e, "agent system");
            }
            // Held while the system runs: dropping it stops the announcer.
            drop(datapath);
        }
        Err(e) => {
            let _ = started.send(Err(e.to_string()));
        }
    }
}
