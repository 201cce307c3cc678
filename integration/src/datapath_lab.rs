//! The agent's datapath code path, run in-process inside a network
//! namespace: [`InProcessAgent`] starts a thread that enters the namespace
//! and runs an actix System with the DeviceActor (writing the `devices`
//! table through `DeviceTableWriter`), the AnnounceActor and the
//! `l2-announce` reconciler over a temporary statedb, with the eBPF
//! responder pinned in a fresh bpffs directory. Tests play the parts of the
//! ServiceActor (rows in `l2-announce`) and the LeaseActor (`Renewed`,
//! `ElectionGroups`).
//!
//! It is not the agent binary: no Kubernetes, no CLI, no local API.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::actors::announce::{
    AnnounceActor, Datapath, DatapathObserver, GratuitousConfig, NoDatapathObserver,
};
use ::actors::device_table::DeviceTableWriter;
use ::actors::devices::{DEVICES, DeviceActor, DeviceFilter, DeviceRow, TrackerOptions};
use ::actors::messages::{ElectionGroups, Renewed};
use ::actors::tables::{L2_ANNOUNCE, L2AnnounceRow, announce_key};
use actix::prelude::*;
use bpf::{AttachMode, Responder, ResponderConfig, ResponderEntry};
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
    #[error("sending to the AnnounceActor: {0}")]
    Mailbox(#[from] MailboxError),
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
    /// How often the AnnounceActor refreshes liveness.
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

fn lock(dp: &Mutex<Datapath>) -> MutexGuard<'_, Datapath> {
    dp.lock().unwrap_or_else(|p| p.into_inner())
}

/// The agent's datapath actors running in a namespace. Dropping it stops
/// them and removes the pinned maps and links.
pub struct InProcessAgent {
    db: statedb::Db,
    rows: Table<L2AnnounceRow>,
    devices: Table<DeviceRow>,
    announce: Addr<AnnounceActor>,
    system: Option<actix::System>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    datapath: Option<Arc<Mutex<Datapath>>>,
    pin_dir: PathBuf,
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

type Started = Result<(Addr<AnnounceActor>, actix::System), String>;

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
        let responder = Responder::open(&ResponderConfig {
            pin_dir: pin_dir.clone(),
            max_liveness: config.max_liveness,
        })?;
        let datapath = Arc::new(Mutex::new(Datapath::new(responder, config.mode)));
        let db = statedb::Db::open_temporary()?;
        let rows = Table::open(&db, L2_ANNOUNCE)?;
        let devices = Table::open(&db, DEVICES)?;

        let (started_tx, started_rx) = std::sync::mpsc::channel::<Started>();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let db = db.clone();
            let datapath = datapath.clone();
            let ns_path = ns.path();
            let ns_name = ns.name().to_string();
            std::thread::Builder::new()
                .name(format!("agent-{ns_name}"))
                .spawn(move || {
                    agent_thread(
                        &ns_name,
                        &ns_path,
                        db,
                        datapath,
                        config,
                        shutdown_rx,
                        started_tx,
                    )
                })
                .map_err(|e| AgentError::Thread(e.to_string()))?
        };
        let (announce, system) = match started_rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(AgentError::Thread(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(AgentError::Thread("exited before starting".into()));
            }
        };
        guard.0 = None;
        let agent = InProcessAgent {
            db,
            rows,
            devices,
            announce,
            system: Some(system),
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            datapath: Some(datapath),
            pin_dir,
        };
        for name in wait_devices {
            agent.wait_device(name, Duration::from_secs(10))?;
        }
        Ok(agent)
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

    /// Writes a pending `l2-announce` row, as the ServiceActor does.
    pub fn upsert(&self, ip: IpAddr, interface: &str, origins: &[&str]) -> Result<(), AgentError> {
        let mut origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        origins.sort();
        let mut txn = self.db.write_txn();
        self.rows.insert(
            &mut txn,
            L2AnnounceRow {
                ip,
                network_interface: interface.to_string(),
                origins,
                status: Status::Pending,
            },
        )?;
        txn.commit()?;
        Ok(())
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

    /// `Renewed{service, fence_until}` to the AnnounceActor, as the
    /// LeaseActor sends it; returns once handled.
    pub fn renewed(&self, service: &str, fence_until: Instant) -> Result<(), AgentError> {
        self.send(Renewed {
            service: service.to_string(),
            fence_until,
        })
    }

    /// `ElectionGroups` (Service -> election key) to the AnnounceActor.
    pub fn election_groups(&self, groups: &[(&str, &str)]) -> Result<(), AgentError> {
        let map: BTreeMap<String, String> = groups
            .iter()
            .map(|(s, e)| (s.to_string(), e.to_string()))
            .collect();
        self.send(ElectionGroups(map))
    }

    fn send<M>(&self, msg: M) -> Result<(), AgentError>
    where
        M: Message<Result = ()> + Send + 'static,
        AnnounceActor: Handler<M>,
    {
        if self.system.is_none() {
            return Err(AgentError::Stopped);
        }
        futures::executor::block_on(self.announce.send(msg))?;
        Ok(())
    }

    fn datapath(&self) -> Result<MutexGuard<'_, Datapath>, AgentError> {
        self.datapath
            .as_deref()
            .map(lock)
            .ok_or(AgentError::Stopped)
    }

    /// The responder's map entry for `ip` on `ifindex`, if any.
    pub fn entry(&self, ip: IpAddr, ifindex: u32) -> Result<Option<ResponderEntry>, AgentError> {
        Ok(self
            .datapath()?
            .responses()?
            .into_iter()
            .find(|e| e.ip == ip && e.ifindex == ifindex))
    }

    /// Every responder map entry.
    pub fn entries(&self) -> Result<Vec<ResponderEntry>, AgentError> {
        Ok(self.datapath()?.responses()?)
    }

    /// `lease_fence[slot]` (CLOCK_MONOTONIC ns).
    pub fn fence_ns(&self, slot: u32) -> Result<u64, AgentError> {
        Ok(self.datapath()?.responder().fence(slot)?)
    }

    /// `agent_liveness[0]` (CLOCK_MONOTONIC ns).
    pub fn liveness_ns(&self) -> Result<u64, AgentError> {
        Ok(self.datapath()?.responder().liveness()?)
    }

    /// Interfaces the responder is attached to (pinned links).
    pub fn attached(&self) -> Result<Vec<bpf::AttachedLink>, AgentError> {
        Ok(self.datapath()?.responder().attached()?)
    }

    /// Stops the actors and the reconciler, as if the agent died: the pinned
    /// program and maps stay and keep answering until liveness or the
    /// fences run out. Map reads keep working.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
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
        // The responder (maps, programs) goes before its pins.
        self.datapath = None;
        if let Err(e) = Responder::remove_pins(&self.pin_dir) {
            tracing::warn!(dir = %self.pin_dir.display(), error = %e, "removing pins");
        }
    }
}

fn agent_thread(
    ns_name: &str,
    ns_path: &Path,
    db: statedb::Db,
    datapath: Arc<Mutex<Datapath>>,
    config: AgentConfig,
    shutdown: tokio::sync::oneshot::Receiver<()>,
    started: std::sync::mpsc::Sender<Started>,
) {
    let entered = crate::netns::enter_path(ns_name, ns_path);
    if let Err(e) = entered {
        let _ = started.send(Err(e.to_string()));
        return;
    }
    let system = actix::System::new();
    let observer: Arc<dyn DatapathObserver> = Arc::new(NoDatapathObserver);
    let result = system.block_on(async move {
        let writer = DeviceTableWriter::new(db.clone(), None)?.start();
        DeviceActor::new(
            DeviceFilter::all(),
            TrackerOptions::default(),
            writer.recipient(),
        )
        .start();
        let announce =
            AnnounceActor::new(datapath.clone(), config.liveness_interval, observer.clone())
                .start();
        let reconciler =
            ::actors::announce::reconciler(&db, datapath, config.gratuitous, observer)?;
        actix::spawn(async move {
            let stop = async {
                let _ = shutdown.await;
            };
            if let Err(e) = reconciler.run(stop).await {
                tracing::error!(error = %e, "l2-announce reconciler failed");
            }
        });
        Ok::<_, statedb::Error>(announce)
    });
    match result {
        Ok(addr) => {
            if started.send(Ok((addr, actix::System::current()))).is_err() {
                return;
            }
            if let Err(e) = system.run() {
                tracing::error!(error = %e, "agent system");
            }
        }
        Err(e) => {
            let _ = started.send(Err(e.to_string()));
        }
    }
}
