//! The netlink side of the device table: one rtnetlink socket subscribed to
//! link and address notifications, a dump at start and after every overrun,
//! and a task that turns what it reads into [`DeviceChange`]s.
//!
//! The socket belongs to the network namespace of the thread that calls
//! [`DeviceTracker::start`]; the tracker never switches namespaces itself.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::state::{DeviceState, Link};
use super::{DeviceChange, DeviceFilter};

/// Why the tracker could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("opening the rtnetlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("dumping {what} over rtnetlink: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Tuning of the tracker; the defaults suit the agent.
#[derive(Debug, Clone)]
pub struct TrackerOptions {
    /// `SO_RCVBUF` of the netlink socket (the kernel doubles it); `None`
    /// keeps the system default. A small value makes overruns easy to
    /// provoke in tests.
    pub receive_buffer: Option<usize>,
    /// Pause before retrying a failed dump or reopening a closed socket.
    pub retry_interval: Duration,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        Self {
            receive_buffer: None,
            retry_interval: Duration::from_millis(500),
        }
    }
}

/// Follows the devices of the current network namespace. The first change
/// is always a [`DeviceChange::Resync`] with every device; after that come
/// upserts and deletes, and another resync after each netlink overrun.
/// Dropping the tracker stops it.
#[derive(Debug)]
pub struct DeviceTracker {
    changes: mpsc::UnboundedReceiver<DeviceChange>,
    task: JoinHandle<()>,
}

impl DeviceTracker {
    /// Subscribe, dump, and start following, with default options. Must be
    /// called inside a tokio runtime.
    pub async fn start(filter: DeviceFilter) -> Result<Self, DeviceError> {
        Self::start_with(filter, TrackerOptions::default()).await
    }

    pub async fn start_with(
        filter: DeviceFilter,
        options: TrackerOptions,
    ) -> Result<Self, DeviceError> {
        let mut session = Session::open(&options)?;
        let mut state = DeviceState::new(filter);
        let initial = session.dump(&mut state).await?;
        let (tx, changes) = mpsc::unbounded_channel();
        // The receiver is alive (it is right here), so this cannot fail.
        let _ = tx.send(initial);
        let task = tokio::spawn(follow(Some(session), state, options, tx));
        Ok(Self { changes, task })
    }

    /// The next change; `None` once the tracker has stopped.
    pub async fn recv(&mut self) -> Option<DeviceChange> {
        self.changes.recv().await
    }
}

impl Stream for DeviceTracker {
    type Item = DeviceChange;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<DeviceChange>> {
        self.changes.poll_recv(cx)
    }
}

impl Drop for DeviceTracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two rtnetlink sockets: one subscribed to the link and address groups,
/// read only for notifications, and one for dumps. The subscription exists
/// before the first dump, so nothing falls between dump and follow; keeping
/// dumps off the subscribed socket means a notification can never be
/// mistaken for a dump reply (both come from the kernel, matched by
/// sequence number only) and dump replies do not compete with
/// notifications for its receive buffer.
struct Session {
    handle: Handle,
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    connections: [JoinHandle<()>; 2],
}

impl Drop for Session {
    fn drop(&mut self) {
        for c in &self.connections {
            c.abort();
        }
    }
}

impl Session {
    fn open(options: &TrackerOptions) -> Result<Self, DeviceError> {
        let (mut events, _, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .map_err(DeviceError::Socket)?;
        if let Some(size) = options.receive_buffer {
            let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
            events
                .socket_mut()
                .socket_mut()
                .set_rx_buf_sz(size)
                .map_err(DeviceError::Socket)?;
        }
        let (dumps, handle, _) = rtnetlink::new_connection().map_err(DeviceError::Socket)?;
        Ok(Self {
            handle,
            messages,
            connections: [tokio::spawn(events), tokio::spawn(dumps)],
        })
    }

    /// Dump links and addresses into `state`; returns the resync.
    async fn dump(&mut self, state: &mut DeviceState) -> Result<DeviceChange, DeviceError> {
        let links: Vec<Link> = self
            .handle
            .link()
            .get()
            .execute()
            .try_filter_map(|m| async move { Ok(parse_link(m)) })
            .try_collect()
            .await
            .map_err(|source| DeviceError::Dump {
                what: "links",
                source,
            })?;
        let addrs: Vec<(u32, IpAddr, u8)> = self
            .handle
            .address()
            .get()
            .execute()
            .try_filter_map(|m| async move { Ok(parse_address(&m)) })
            .try_collect()
            .await
            .map_err(|source| DeviceError::Dump {
                what: "addresses",
                source,
            })?;
        debug!(
            links = links.len(),
            addresses = addrs.len(),
            "dumped devices"
        );
        Ok(state.resync(links, addrs))
    }
}

/// What to do after reading one message.
enum Step {
    Changes(Vec<DeviceChange>),
    Resync,
    Ignore,
}

/// Translate one netlink message into state changes.
fn handle_message(state: &mut DeviceState, message: NetlinkMessage<RouteNetlinkMessage>) -> Step {
    match message.payload {
        NetlinkPayload::InnerMessage(inner) => Step::Changes(handle_event(state, inner)),
        NetlinkPayload::Overrun(_) => {
            warn!("netlink receive buffer overrun, dumping devices again");
            Step::Resync
        }
        NetlinkPayload::Error(e) => {
            warn!(error = ?e, "error message on the netlink socket, dumping devices again");
            Step::Resync
        }
        _ => Step::Ignore,
    }
}

fn handle_event(state: &mut DeviceState, message: RouteNetlinkMessage) -> Vec<DeviceChange> {
    match message {
        // Bridge port notifications (AF_BRIDGE) describe the port, not the
        // link: a DELLINK there means "left the bridge", not "deleted".
        RouteNetlinkMessage::NewLink(m) if is_link_family(&m) => match parse_link(m) {
            Some(link) => state.upsert_link(link),
            None => vec![],
        },
        RouteNetlinkMessage::DelLink(m) if is_link_family(&m) => state.remove_link(m.header.index),
        RouteNetlinkMessage::NewAddress(m) => match parse_address(&m) {
            Some((index, ip, prefix)) => state.add_address(index, ip, prefix),
            None => vec![],
        },
        RouteNetlinkMessage::DelAddress(m) => match parse_address(&m) {
            Some((index, ip, prefix)) => state.remove_address(index, ip, prefix),
            None => vec![],
        },
        _ => vec![],
    }
}

fn is_link_family(m: &LinkMessage) -> bool {
    m.header.interface_family == AddressFamily::Unspec
}

/// Reduce an `RTM_NEWLINK` to a [`Link`]; `None` without a name.
fn parse_link(m: LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind = None;
    let mut mtu = 0;
    let mut hw_addr = Vec::new();
    let mut master_index = None;
    let mut oper_state = String::from("unknown");
    for attr in m.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n),
            LinkAttribute::Mtu(v) => mtu = v,
            LinkAttribute::Address(a) => hw_addr = a,
            LinkAttribute::Controller(i) if i != 0 => master_index = Some(i),
            LinkAttribute::OperState(s) => oper_state = s.to_string().to_lowercase(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Some(Link {
        index: m.header.index,
        name: name?,
        kind,
        mtu,
        hw_addr,
        flags: m.header.flags.bits(),
        master_index,
        oper_state,
    })
}

/// (ifindex, local address, prefix length) of an address message.
fn parse_address(m: &AddressMessage) -> Option<(u32, IpAddr, u8)> {
    let mut address = None;
    let mut local = None;
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Address(a) => address = Some(*a),
            // On point-to-point links IFA_ADDRESS is the peer, IFA_LOCAL ours.
            AddressAttribute::Local(a) => local = Some(*a),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    Some((m.header.index, ip, m.header.prefix_len))
}

/// The tracker task: read messages, emit changes, dump again when needed,
/// reopen the socket if it closes. Ends when the receiver is dropped.
async fn follow(
    mut session: Option<Session>,
    mut state: DeviceState,
    options: TrackerOptions,
    tx: mpsc::UnboundedSender<DeviceChange>,
) {
    let mut need_resync = false;
    loop {
        let Some(current) = session.as_mut() else {
            tokio::select! {
                _ = tokio::time::sleep(options.retry_interval) => {}
                _ = tx.closed() => return,
            }
            match Session::open(&options) {
                Ok(s) => {
                    info!("netlink socket reopened");
                    session = Some(s);
                    need_resync = true;
                }
                Err(error) => warn!(%error, "reopening the netlink socket failed"),
            }
            continue;
        };
        if need_resync {
            match current.dump(&mut state).await {
                Ok(change) => {
                    need_resync = false;
                    if tx.send(change).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    warn!(%error, "device dump failed, reopening the socket");
                    session = None;
                }
            }
            continue;
        }
        let message = tokio::select! {
            m = current.messages.next() => m,
            _ = tx.closed() => return,
        };
        let Some((message, _)) = message else {
            warn!("netlink socket closed, reopening");
            session = None;
            continue;
        };
        match handle_message(&mut state, message) {
            Step::Changes(changes) => {
                for change in changes {
                    debug!(?change, "device change");
                    if tx.send(change).is_err() {
                        return;
                    }
                }
            }
            Step::Resync => need_resync = true,
            Step::Ignore => {}
        }
    }
}
