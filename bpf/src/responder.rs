//! [`Responder`]: loads `responder.o` with aya, pins its maps under a bpffs
//! directory (reused by the next agent), offers typed access to the maps and
//! attaches the program to interfaces with attachments that outlive the
//! process.
//!
//! Attachment: TC ingress through a TCX bpf_link (default) or XDP through an
//! XDP bpf_link, each pinned at `<pin_dir>/links/{tc,xdp}-<ifindex>`. A pinned
//! link stays attached after the process exits; a restarted agent opens the
//! pin and swaps its freshly loaded program in atomically
//! (`BPF_LINK_UPDATE`), so there is no moment without a responder. Removing
//! the pin detaches. See bpf/README.md.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, MapError};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::xdp::XdpLink;
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

use crate::maps::{
    ConfigValue, EntryValue, IFMAC_MAX_ENTRIES, IfMacValue, LEASE_FENCE_SLOTS, MacAddr,
    RESPONDER_MAX_ENTRIES, V4Key, V6Key,
};
use crate::sys;

/// The compiled datapath (built by build.rs from `responder.c`).
static RESPONDER_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/responder.o"));

/// Name of the TC program in the object.
pub const TC_PROGRAM: &str = "l2_responder";
/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "l2_responder_xdp";

pub(crate) const MAP_V4: &str = "l2_responder_v4";
pub(crate) const MAP_V6: &str = "l2_responder_v6";
pub(crate) const MAP_LIVENESS: &str = "agent_liveness";
pub(crate) const MAP_FENCE: &str = "lease_fence";
const MAP_NODE_FENCE: &str = "l2_responder_node_fence";
const MAP_IFMAC: &str = "l2_responder_ifmac";
const MAP_CONFIG: &str = "l2_responder_config";
const LINKS_DIR: &str = "links";

/// Every map the object pins: name, key size, value size, max entries.
const PINNED_MAPS: [(&str, u32, u32, u32); 7] = [
    (MAP_V4, 8, 16, RESPONDER_MAX_ENTRIES),
    (MAP_V6, 24, 16, RESPONDER_MAX_ENTRIES),
    (MAP_LIVENESS, 4, 8, 1),
    (MAP_FENCE, 4, 8, LEASE_FENCE_SLOTS),
    (MAP_NODE_FENCE, 4, 8, 1),
    (MAP_IFMAC, 4, 8, IFMAC_MAX_ENTRIES),
    (MAP_CONFIG, 4, 16, 1),
];

/// Where the responder runs on an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttachMode {
    /// TC ingress (TCX link). Sees frames after the driver built an skb;
    /// works on every device and coexists with other TCX programs.
    #[default]
    Tc,
    /// XDP (driver mode where supported, else generic). Earliest hook, but
    /// an interface has only one XDP program.
    Xdp,
}

impl AttachMode {
    fn pin_prefix(self) -> &'static str {
        match self {
            Self::Tc => "tc-",
            Self::Xdp => "xdp-",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Tc => Self::Xdp,
            Self::Xdp => Self::Tc,
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tc => "tc",
            Self::Xdp => "xdp",
        })
    }
}

/// A pinned attachment found under `<pin_dir>/links`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachedLink {
    /// Interface index.
    pub ifindex: u32,
    /// TC or XDP.
    pub mode: AttachMode,
}

/// One responder map entry, as listed by [`Responder::list`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponderEntry {
    /// The answered address.
    pub ip: IpAddr,
    /// The interface it is answered on.
    pub ifindex: u32,
    /// Its `lease_fence` slot.
    pub fence_slot: u32,
    /// Replies the datapath sent for it.
    pub responses_sent: u64,
}

/// How to open the responder.
#[derive(Clone, Debug)]
pub struct ResponderConfig {
    /// bpffs directory holding the pinned maps and links, e.g.
    /// `/sys/fs/bpf/l2announcer`. Created when missing.
    pub pin_dir: PathBuf,
    /// Maximum age of `agent_liveness` for the datapath to answer
    /// (written to `l2_responder_config`; default: the lease duration).
    pub max_liveness: Duration,
}

/// Errors of [`Responder`].
#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    /// The pin directory is not on a bpf filesystem.
    #[error("{path} is not on a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NotBpffs {
        /// The configured pin directory.
        path: PathBuf,
    },
    /// A file system operation under the pin directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// Loading the object (map creation, relocation) failed.
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// The object lacks a map or program it must have (build mismatch).
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Underlying error.
        source: Box<MapError>,
    },
    /// Loading (verifier) or attaching a program failed.
    #[error("program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// Underlying error.
        source: Box<ProgramError>,
    },
    /// Pinning or opening a pinned link failed.
    #[error("link {path}: {message}")]
    Link {
        /// The link's pin path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No interface with that name in this network namespace.
    #[error("no interface named {0:?}")]
    UnknownInterface(String),
    /// A fence slot beyond the `lease_fence` map.
    #[error("fence slot {0} out of range (the map has {LEASE_FENCE_SLOTS} slots)")]
    FenceSlot(u32),
    /// The entry exists with another fence slot. Values are never rewritten
    /// (the datapath counts in them); remove the entry, then insert it.
    #[error(
        "{ip} on ifindex {ifindex} is already gated by fence slot {existing_slot}, not {requested_slot}; remove it first"
    )]
    SlotMismatch {
        /// The address.
        ip: IpAddr,
        /// The interface.
        ifindex: u32,
        /// The slot the existing entry has (and keeps).
        existing_slot: u32,
        /// The slot asked for.
        requested_slot: u32,
    },
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> ResponderError {
    move |source| ResponderError::Map {
        map,
        source: Box::new(source),
    }
}

fn prog_err(program: &'static str) -> impl FnOnce(ProgramError) -> ResponderError {
    move |source| ResponderError::Program {
        program,
        source: Box::new(source),
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ResponderError + '_ {
    move |source| ResponderError::Io {
        path: path.to_owned(),
        source,
    }
}

fn is_enoent(err: &MapError) -> bool {
    matches!(err, MapError::KeyNotFound) || is_errno(err, libc::ENOENT)
}

/// `BPF_NOEXIST`: create the element only if its key is not in the map.
const BPF_NOEXIST: u64 = 1;

fn is_errno(err: &MapError, errno: i32) -> bool {
    matches!(err, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(errno))
}

/// Creates one responder entry for `fence_slot`, never rewriting an existing
/// value: the datapath counts replies in it (`__sync_fetch_and_add` on the
/// element), and a whole-value update would swap in a new element and lose
/// every increment made in between. An existing entry with the same slot is
/// left as it is; one with another slot is [`ResponderError::SlotMismatch`].
fn insert_entry<K: aya::Pod>(
    map: &mut HashMap<MapData, K, EntryValue>,
    name: &'static str,
    key: K,
    ip: IpAddr,
    ifindex: u32,
    fence_slot: u32,
) -> Result<(), ResponderError> {
    check_slot(fence_slot)?;
    let value = EntryValue {
        fence_slot,
        ..EntryValue::default()
    };
    // Two rounds: the entry may be removed between the failed create and the
    // read (only by another process: this one owns the maps).
    for _ in 0..2 {
        match map.insert(key, value, BPF_NOEXIST) {
            Ok(()) => return Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
        match map.get(&key, 0) {
            Ok(existing) if existing.fence_slot == fence_slot => return Ok(()),
            Ok(existing) => {
                return Err(ResponderError::SlotMismatch {
                    ip,
                    ifindex,
                    existing_slot: existing.fence_slot,
                    requested_slot: fence_slot,
                });
            }
            Err(e) if is_enoent(&e) => continue,
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Err(ResponderError::Map {
        map: name,
        source: Box::new(MapError::KeyNotFound),
    })
}

/// The fence slot of an entry, if it exists.
fn lookup_slot<K: aya::Pod>(
    map: &HashMap<MapData, K, EntryValue>,
    name: &'static str,
    key: &K,
) -> Result<Option<u32>, ResponderError> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v.fence_slot)),
        Err(e) if is_enoent(&e) => Ok(None),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// Removes one responder entry; whether it was there.
fn remove_entry<K: aya::Pod>(
    map: &mut HashMap<MapData, K, EntryValue>,
    name: &'static str,
    key: K,
) -> Result<bool, ResponderError> {
    match map.remove(&key) {
        Ok(()) => Ok(true),
        Err(e) if is_enoent(&e) => Ok(false),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// The loaded responder: programs, typed maps and attachments.
pub struct Responder {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    v4: HashMap<MapData, V4Key, EntryValue>,
    v6: HashMap<MapData, V6Key, EntryValue>,
    liveness: Array<MapData, u64>,
    fence: Array<MapData, u64>,
    node_fence: Array<MapData, u64>,
    ifmac: HashMap<MapData, u32, IfMacValue>,
    config: Array<MapData, ConfigValue>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Loads the object, creating its maps under `config.pin_dir` or reusing
    /// the ones a previous agent pinned there (their entries, counters and
    /// liveness stay), loads both programs (the verifier runs here) and
    /// writes the maximum liveness age.
    pub fn open(config: &ResponderConfig) -> Result<Self, ResponderError> {
        let pin_dir = config.pin_dir.clone();
        if !sys::is_on_bpffs(&pin_dir).map_err(io_err(Path::new("/proc/self/mounts")))? {
            return Err(ResponderError::NotBpffs { path: pin_dir });
        }
        let links = pin_dir.join(LINKS_DIR);
        std::fs::create_dir_all(&links).map_err(io_err(&links))?;
        drop_incompatible_pins(&pin_dir)?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load(RESPONDER_OBJ)
            .map_err(|e| ResponderError::Load(Box::new(e)))?;

        let tc: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM)
            .ok_or(ResponderError::Missing(TC_PROGRAM))?
            .try_into()
            .map_err(prog_err(TC_PROGRAM))?;
        tc.load().map_err(prog_err(TC_PROGRAM))?;
        let xdp: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(ResponderError::Missing(XDP_PROGRAM))?
            .try_into()
            .map_err(prog_err(XDP_PROGRAM))?;
        xdp.load().map_err(prog_err(XDP_PROGRAM))?;

        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(ResponderError::Missing(name));
        let v4 = HashMap::try_from(take(MAP_V4)?).map_err(map_err(MAP_V4))?;
        let v6 = HashMap::try_from(take(MAP_V6)?).map_err(map_err(MAP_V6))?;
        let liveness = Array::try_from(take(MAP_LIVENESS)?).map_err(map_err(MAP_LIVENESS))?;
        let fence = Array::try_from(take(MAP_FENCE)?).map_err(map_err(MAP_FENCE))?;
        let node_fence = Array::try_from(take(MAP_NODE_FENCE)?).map_err(map_err(MAP_NODE_FENCE))?;
        let ifmac = HashMap::try_from(take(MAP_IFMAC)?).map_err(map_err(MAP_IFMAC))?;
        let cfg = Array::try_from(take(MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?;

        let mut responder = Self {
            ebpf,
            pin_dir,
            v4,
            v6,
            liveness,
            fence,
            node_fence,
            ifmac,
            config: cfg,
        };
        responder.set_max_liveness(config.max_liveness)?;
        tracing::info!(pin_dir = %responder.pin_dir.display(), "eBPF responder loaded");
        Ok(responder)
    }

    /// The bpffs directory of this responder.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Sets the maximum liveness age the datapath accepts.
    pub fn set_max_liveness(&mut self, max: Duration) -> Result<(), ResponderError> {
        let value = ConfigValue {
            max_liveness_ns: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
            reserved: 0,
        };
        self.config.set(0, value, 0).map_err(map_err(MAP_CONFIG))
    }

    /// Answers ARP for `ip` on `ifindex`, gated by `lease_fence[fence_slot]`.
    /// An existing entry is never rewritten: with the same slot this is a
    /// no-op, with another slot [`ResponderError::SlotMismatch`] (remove it
    /// first; its counter goes with it).
    pub fn insert_v4(
        &mut self,
        ip: Ipv4Addr,
        ifindex: u32,
        fence_slot: u32,
    ) -> Result<(), ResponderError> {
        let key = V4Key::new(ip, ifindex);
        insert_entry(&mut self.v4, MAP_V4, key, ip.into(), ifindex, fence_slot)
    }

    /// Stops answering ARP for `ip` on `ifindex`. Returns whether it was there.
    pub fn remove_v4(&mut self, ip: Ipv4Addr, ifindex: u32) -> Result<bool, ResponderError> {
        remove_entry(&mut self.v4, MAP_V4, V4Key::new(ip, ifindex))
    }

    /// Answers Neighbor Solicitations for `ip` on `ifindex`, gated by
    /// `lease_fence[fence_slot]`. Same rules as [`Responder::insert_v4`].
    pub fn insert_v6(
        &mut self,
        ip: Ipv6Addr,
        ifindex: u32,
        fence_slot: u32,
    ) -> Result<(), ResponderError> {
        let key = V6Key::new(ip, ifindex);
        insert_entry(&mut self.v6, MAP_V6, key, ip.into(), ifindex, fence_slot)
    }

    /// Stops answering for `ip` on `ifindex`. Returns whether it was there.
    pub fn remove_v6(&mut self, ip: Ipv6Addr, ifindex: u32) -> Result<bool, ResponderError> {
        remove_entry(&mut self.v6, MAP_V6, V6Key::new(ip, ifindex))
    }

    /// [`Responder::insert_v4`] or [`Responder::insert_v6`] by family: the
    /// form the reconciler uses.
    pub fn insert(
        &mut self,
        ip: IpAddr,
        ifindex: u32,
        fence_slot: u32,
    ) -> Result<(), ResponderError> {
        match ip {
            IpAddr::V4(ip) => self.insert_v4(ip, ifindex, fence_slot),
            IpAddr::V6(ip) => self.insert_v6(ip, ifindex, fence_slot),
        }
    }

    /// See [`Responder::insert`].
    pub fn remove(&mut self, ip: IpAddr, ifindex: u32) -> Result<bool, ResponderError> {
        match ip {
            IpAddr::V4(ip) => self.remove_v4(ip, ifindex),
            IpAddr::V6(ip) => self.remove_v6(ip, ifindex),
        }
    }

    /// Every entry of both maps with its counter.
    pub fn list(&self) -> Result<Vec<ResponderEntry>, ResponderError> {
        list_entries(&self.v4, &self.v6)
    }

    /// Stamps `agent_liveness` with the current monotonic time; returns it.
    pub fn set_liveness_now(&mut self) -> Result<u64, ResponderError> {
        let now = sys::monotonic_now_ns();
        self.set_liveness(now)?;
        Ok(now)
    }

    /// Writes `agent_liveness[0]` (CLOCK_MONOTONIC ns; 0 = never, which
    /// silences the datapath).
    pub fn set_liveness(&mut self, ktime_ns: u64) -> Result<(), ResponderError> {
        self.liveness
            .set(0, ktime_ns, 0)
            .map_err(map_err(MAP_LIVENESS))
    }

    /// The current `agent_liveness[0]`.
    pub fn liveness(&self) -> Result<u64, ResponderError> {
        self.liveness.get(&0, 0).map_err(map_err(MAP_LIVENESS))
    }

    /// Sets the deadline (CLOCK_MONOTONIC ns) of fence `slot`; entries with
    /// that slot are answered only before it. 0 closes the fence.
    pub fn set_fence(&mut self, slot: u32, deadline_ns: u64) -> Result<(), ResponderError> {
        check_slot(slot)?;
        self.fence
            .set(slot, deadline_ns, 0)
            .map_err(map_err(MAP_FENCE))
    }

    /// The deadline of fence `slot`.
    pub fn fence(&self, slot: u32) -> Result<u64, ResponderError> {
        check_slot(slot)?;
        self.fence.get(&slot, 0).map_err(map_err(MAP_FENCE))
    }

    /// Sets the node fence (CLOCK_MONOTONIC ns): every entry is answered only
    /// before it, whatever its lease fence says. In node-heartbeat election
    /// mode each heartbeat renewal extends it (one map write for all the
    /// node's claims); in per-Service mode it is `u64::MAX`. 0 (never
    /// written, the state of a fresh map) closes every entry.
    pub fn set_node_fence(&mut self, deadline_ns: u64) -> Result<(), ResponderError> {
        self.node_fence
            .set(0, deadline_ns, 0)
            .map_err(map_err(MAP_NODE_FENCE))
    }

    /// The node fence's deadline.
    pub fn node_fence(&self) -> Result<u64, ResponderError> {
        self.node_fence.get(&0, 0).map_err(map_err(MAP_NODE_FENCE))
    }

    /// Whether the datapath answers for `ip` on `ifindex` at this moment, by
    /// the same gates it applies: the entry exists, its interface has a
    /// MAC, agent liveness is younger than the maximum, and both its lease
    /// fence and the node fence lie in the future. Check it right before
    /// sending a gratuitous ARP / unsolicited NA for the entry.
    pub fn answers(&self, ip: IpAddr, ifindex: u32) -> Result<bool, ResponderError> {
        let slot = match ip {
            IpAddr::V4(v4) => lookup_slot(&self.v4, MAP_V4, &V4Key::new(v4, ifindex))?,
            IpAddr::V6(v6) => lookup_slot(&self.v6, MAP_V6, &V6Key::new(v6, ifindex))?,
        };
        let Some(slot) = slot else {
            return Ok(false);
        };
        let has_mac = match self.ifmac.get(&ifindex, 0) {
            Ok(_) => true,
            Err(e) if is_enoent(&e) => false,
            Err(e) => return Err(map_err(MAP_IFMAC)(e)),
        };
        let liveness = self.liveness()?;
        let max = self
            .config
            .get(&0, 0)
            .map_err(map_err(MAP_CONFIG))?
            .max_liveness_ns;
        let lease = if slot < LEASE_FENCE_SLOTS {
            self.fence(slot)?
        } else {
            0
        };
        let node = self.node_fence()?;
        let now = sys::monotonic_now_ns();
        let alive = liveness != 0 && liveness <= now && now - liveness < max;
        Ok(has_mac && alive && now < lease && now < node)
    }

    /// Records the MAC the datapath answers with on `ifindex` (also done by
    /// [`Responder::attach`]; call again when the MAC changes).
    pub fn set_interface_mac(&mut self, ifindex: u32, mac: MacAddr) -> Result<(), ResponderError> {
        let value = IfMacValue { addr: mac, pad: 0 };
        self.ifmac
            .insert(ifindex, value, 0)
            .map_err(map_err(MAP_IFMAC))
    }

    /// Forgets the MAC of `ifindex`; the datapath stops answering there.
    pub fn remove_interface_mac(&mut self, ifindex: u32) -> Result<bool, ResponderError> {
        match self.ifmac.remove(&ifindex) {
            Ok(()) => Ok(true),
            Err(e) if is_enoent(&e) => Ok(false),
            Err(e) => Err(map_err(MAP_IFMAC)(e)),
        }
    }

    /// Attaches the responder to `ifname` in `mode` and records its MAC.
    /// Idempotent: a link pinned by this or an earlier agent is kept and
    /// switched atomically to this process's program; a link in the other
    /// mode on the same interface is removed after the new one is in place.
    /// Returns the interface index.
    pub fn attach(
        &mut self,
        ifname: &str,
        mac: MacAddr,
        mode: AttachMode,
    ) -> Result<u32, ResponderError> {
        let ifindex = sys::if_nametoindex(ifname)
            .ok_or_else(|| ResponderError::UnknownInterface(ifname.to_owned()))?;
        self.set_interface_mac(ifindex, mac)?;
        let path = self.link_path(ifindex, mode);
        let reused = match mode {
            AttachMode::Tc => self.attach_tc(ifname, &path)?,
            AttachMode::Xdp => self.attach_xdp(ifname, &path)?,
        };
        self.remove_link(ifindex, mode.other())?;
        tracing::info!(interface = ifname, ifindex, %mode, reused, "responder attached");
        Ok(ifindex)
    }

    fn attach_tc(&mut self, ifname: &str, path: &Path) -> Result<bool, ResponderError> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(TC_PROGRAM)
            .ok_or(ResponderError::Missing(TC_PROGRAM))?
            .try_into()
            .map_err(prog_err(TC_PROGRAM))?;
        let our_id = prog.info().map_err(prog_err(TC_PROGRAM))?.id();
        attach_pinned(
            prog,
            path,
            our_id,
            AttachMode::Tc,
            |prog, existing| {
                let link = SchedClassifierLink::try_from(existing).map_err(|e| e.to_string())?;
                let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
                prog.take_link(id).map(drop).map_err(|e| e.to_string())
            },
            |prog| {
                let id = prog
                    .attach_with_options(
                        ifname,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(prog_err(TC_PROGRAM))?;
                let link = prog.take_link(id).map_err(prog_err(TC_PROGRAM))?;
                Ok(link
                    .try_into()
                    .map_err(|e: aya::programs::links::LinkError| e.to_string()))
            },
        )
    }

    fn attach_xdp(&mut self, ifname: &str, path: &Path) -> Result<bool, ResponderError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(ResponderError::Missing(XDP_PROGRAM))?
            .try_into()
            .map_err(prog_err(XDP_PROGRAM))?;
        let our_id = prog.info().map_err(prog_err(XDP_PROGRAM))?.id();
        attach_pinned(
            prog,
            path,
            our_id,
            AttachMode::Xdp,
            |prog, existing| {
                let link = XdpLink::try_from(existing).map_err(|e| e.to_string())?;
                let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
                prog.take_link(id).map(drop).map_err(|e| e.to_string())
            },
            |prog| {
                let id = prog
                    .attach(ifname, XdpMode::Default)
                    .map_err(prog_err(XDP_PROGRAM))?;
                let link = prog.take_link(id).map_err(prog_err(XDP_PROGRAM))?;
                Ok(link
                    .try_into()
                    .map_err(|e: aya::programs::links::LinkError| {
                        format!("XDP attached without a bpf_link (netlink fallback): {e}")
                    }))
            },
        )
    }

    /// Detaches the responder from `ifname` (both modes) and forgets its MAC.
    /// Returns whether anything was attached.
    pub fn detach(&mut self, ifname: &str) -> Result<bool, ResponderError> {
        let ifindex = sys::if_nametoindex(ifname)
            .ok_or_else(|| ResponderError::UnknownInterface(ifname.to_owned()))?;
        self.detach_ifindex(ifindex)
    }

    /// [`Responder::detach`] by index (works after the interface is gone).
    pub fn detach_ifindex(&mut self, ifindex: u32) -> Result<bool, ResponderError> {
        let tc = self.remove_link(ifindex, AttachMode::Tc)?;
        let xdp = self.remove_link(ifindex, AttachMode::Xdp)?;
        self.remove_interface_mac(ifindex)?;
        if tc || xdp {
            tracing::info!(ifindex, "responder detached");
        }
        Ok(tc || xdp)
    }

    /// The attachments pinned under this responder's directory.
    pub fn attached(&self) -> Result<Vec<AttachedLink>, ResponderError> {
        pinned_links(&self.pin_dir)
    }

    /// Removes every pinned attachment not in `keep` (left by an earlier
    /// run, an interface that is gone, or the other mode) and the MACs of
    /// interfaces no longer attached. Call after attaching what is wanted,
    /// so wanted interfaces never go unanswered. Returns what was removed.
    pub fn cleanup_stale(
        &mut self,
        keep: &[AttachedLink],
    ) -> Result<Vec<AttachedLink>, ResponderError> {
        let keep: BTreeSet<AttachedLink> = keep.iter().copied().collect();
        let mut removed = Vec::new();
        for link in self.attached()? {
            if !keep.contains(&link) {
                self.remove_link(link.ifindex, link.mode)?;
                tracing::info!(ifindex = link.ifindex, mode = %link.mode, "removed stale responder link");
                removed.push(link);
            }
        }
        let kept_ifindexes: BTreeSet<u32> = keep.iter().map(|l| l.ifindex).collect();
        let stale_macs: Vec<u32> = self
            .ifmac
            .keys()
            .collect::<Result<Vec<u32>, MapError>>()
            .map_err(map_err(MAP_IFMAC))?
            .into_iter()
            .filter(|i| !kept_ifindexes.contains(i))
            .collect();
        for ifindex in stale_macs {
            self.remove_interface_mac(ifindex)?;
        }
        Ok(removed)
    }

    /// The loaded program's descriptor, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program_fd(&self, mode: AttachMode) -> Result<BorrowedFd<'_>, ResponderError> {
        match mode {
            AttachMode::Tc => {
                let prog: &SchedClassifier = self
                    .ebpf
                    .program(TC_PROGRAM)
                    .ok_or(ResponderError::Missing(TC_PROGRAM))?
                    .try_into()
                    .map_err(prog_err(TC_PROGRAM))?;
                Ok(prog.fd().map_err(prog_err(TC_PROGRAM))?.as_fd())
            }
            AttachMode::Xdp => {
                let prog: &Xdp = self
                    .ebpf
                    .program(XDP_PROGRAM)
                    .ok_or(ResponderError::Missing(XDP_PROGRAM))?
                    .try_into()
                    .map_err(prog_err(XDP_PROGRAM))?;
                Ok(prog.fd().map_err(prog_err(XDP_PROGRAM))?.as_fd())
            }
        }
    }

    /// Detaches everything pinned under `pin_dir` and deletes the pinned
    /// maps and the directory: a full uninstall (and test cleanup). Only the
    /// names this crate creates are removed.
    pub fn remove_pins(pin_dir: &Path) -> Result<(), ResponderError> {
        let links = pin_dir.join(LINKS_DIR);
        if links.is_dir() {
            for entry in std::fs::read_dir(&links).map_err(io_err(&links))? {
                let entry = entry.map_err(io_err(&links))?;
                if entry
                    .file_name()
                    .to_str()
                    .and_then(parse_link_name)
                    .is_some()
                {
                    remove_file_if_exists(&entry.path())?;
                }
            }
            remove_dir_if_exists(&links)?;
        }
        for (name, ..) in PINNED_MAPS {
            remove_file_if_exists(&pin_dir.join(name))?;
        }
        remove_dir_if_exists(pin_dir)
    }

    fn link_path(&self, ifindex: u32, mode: AttachMode) -> PathBuf {
        self.pin_dir
            .join(LINKS_DIR)
            .join(format!("{}{ifindex}", mode.pin_prefix()))
    }

    fn remove_link(&mut self, ifindex: u32, mode: AttachMode) -> Result<bool, ResponderError> {
        remove_file_if_exists(&self.link_path(ifindex, mode))
    }
}

/// Every entry of both responder maps with its counter.
pub(crate) fn list_entries(
    v4: &HashMap<MapData, V4Key, EntryValue>,
    v6: &HashMap<MapData, V6Key, EntryValue>,
) -> Result<Vec<ResponderEntry>, ResponderError> {
    let mut out = Vec::new();
    for item in v4.iter() {
        let (k, v) = item.map_err(map_err(MAP_V4))?;
        out.push(ResponderEntry {
            ip: IpAddr::V4(k.addr()),
            ifindex: k.ifindex,
            fence_slot: v.fence_slot,
            responses_sent: v.responses_sent,
        });
    }
    for item in v6.iter() {
        let (k, v) = item.map_err(map_err(MAP_V6))?;
        out.push(ResponderEntry {
            ip: IpAddr::V6(k.addr()),
            ifindex: k.ifindex,
            fence_slot: v.fence_slot,
            responses_sent: v.responses_sent,
        });
    }
    Ok(out)
}

/// The attachments pinned under `pin_dir`.
pub(crate) fn pinned_links(pin_dir: &Path) -> Result<Vec<AttachedLink>, ResponderError> {
    let dir = pin_dir.join(LINKS_DIR);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        if let Some(link) = entry.file_name().to_str().and_then(parse_link_name) {
            out.push(link);
        }
    }
    out.sort();
    Ok(out)
}

fn check_slot(slot: u32) -> Result<(), ResponderError> {
    if slot < LEASE_FENCE_SLOTS {
        Ok(())
    } else {
        Err(ResponderError::FenceSlot(slot))
    }
}

fn parse_link_name(name: &str) -> Option<AttachedLink> {
    [AttachMode::Tc, AttachMode::Xdp]
        .into_iter()
        .find_map(|mode| {
            let ifindex = name.strip_prefix(mode.pin_prefix())?.parse().ok()?;
            Some(AttachedLink { ifindex, mode })
        })
}

/// Attaches `prog` through the link pinned at `path`: kept when it runs
/// our program (`our_id`), given our program with `replace` when it runs
/// another (an upgrade: no gap in answering), else removed and made anew
/// with `attach` (its inner error: the link it made is no bpf_link) and
/// pinned. Returns whether a pinned link was reused.
fn attach_pinned<P>(
    prog: &mut P,
    path: &Path,
    our_id: u32,
    mode: AttachMode,
    replace: impl FnOnce(&mut P, FdLink) -> Result<(), String>,
    attach: impl FnOnce(&mut P) -> Result<Result<FdLink, String>, ResponderError>,
) -> Result<bool, ResponderError> {
    if let Some(existing) = open_pinned(path)? {
        if link_program_id(&existing) == Some(our_id) {
            return Ok(true);
        }
        // On success the pin stays; dropping our descriptor leaves the link
        // attached.
        match replace(prog, existing) {
            Ok(()) => return Ok(true),
            Err(message) => {
                tracing::warn!(path = %path.display(), %mode, %message, "pinned link unusable, replacing it");
                remove_file_if_exists(path)?;
            }
        }
    }
    let fd = attach(prog)?.map_err(|message| ResponderError::Link {
        path: path.to_owned(),
        message,
    })?;
    pin_link(fd, path)?;
    Ok(false)
}

/// Opens a pinned link; a pin that cannot be opened is removed (it can only
/// be garbage from an interrupted run).
fn open_pinned(path: &Path) -> Result<Option<FdLink>, ResponderError> {
    if !path.exists() {
        return Ok(None);
    }
    match PinnedLink::from_pin(path) {
        // Converting keeps the pin file: only our descriptor is handed over.
        Ok(pinned) => Ok(Some(FdLink::from(pinned))),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open pinned link, removing it");
            remove_file_if_exists(path)?;
            Ok(None)
        }
    }
}

fn link_program_id(link: &FdLink) -> Option<u32> {
    link.info().ok().map(|info| info.program_id())
}

fn pin_link(fd: FdLink, path: &Path) -> Result<(), ResponderError> {
    // Dropping the returned PinnedLink only closes our descriptor.
    fd.pin(path).map(drop).map_err(|e| ResponderError::Link {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn remove_file_if_exists(path: &Path) -> Result<bool, ResponderError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn remove_dir_if_exists(path: &Path) -> Result<(), ResponderError> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// aya reuses a pinned map by name without comparing its layout. A map left
/// by a build with another layout is unpinned here so a fresh one is made
/// (the old program keeps its own reference until its link is switched).
fn drop_incompatible_pins(pin_dir: &Path) -> Result<(), ResponderError> {
    for (name, key_size, value_size, max_entries) in PINNED_MAPS {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let compatible = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map(|info| {
                info.key_size() == key_size
                    && info.value_size() == value_size
                    && info.max_entries() == max_entries
            })
            .unwrap_or(false);
        if !compatible {
            tracing::warn!(map = name, path = %path.display(), "pinned map has another layout, recreating it");
            remove_file_if_exists(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip() {
        assert_eq!(
            parse_link_name("tc-12"),
            Some(AttachedLink {
                ifindex: 12,
                mode: AttachMode::Tc
            })
        );
        assert_eq!(
            parse_link_name("xdp-3"),
            Some(AttachedLink {
                ifindex: 3,
                mode: AttachMode::Xdp
            })
        );
        assert_eq!(parse_link_name("tc-"), None);
        assert_eq!(parse_link_name("l2_responder_v4"), None);
        assert_eq!(parse_link_name("xdp-1x"), None);
    }

    #[test]
    fn fence_slots_are_bounded() {
        assert!(check_slot(0).is_ok());
        assert!(check_slot(LEASE_FENCE_SLOTS - 1).is_ok());
        assert!(matches!(
            check_slot(LEASE_FENCE_SLOTS),
            Err(ResponderError::FenceSlot(_))
        ));
    }

    #[test]
    fn responder_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Responder>();
    }

    #[test]
    fn object_is_embedded_and_aligned() {
        assert!(RESPONDER_OBJ.starts_with(b"\x7fELF"));
        assert_eq!(RESPONDER_OBJ.as_ptr() as usize % 8, 0);
    }
}
