//! Probing VIPs from the client the way the datapath is judged: every
//! period a tagged ARP request for each IPv4 VIP and a tagged Neighbor
//! Solicitation for each IPv6 VIP, on a thread per family
//! ([`ProbeSession`]), every reply kept with its read time and the MAC it
//! names (so two answering MACs show); and [`takeover`], what such a log
//! shows around a change of holder.
//!
//! The frames and the sockets are integration::probe's and
//! integration::ns_probe's; this is the paced session and its analysis.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{CLIENT_V4, CLIENT_V6, LabError};
use crate::netns::run_in;
use crate::ns_probe::NsProber;
use crate::poll::wait_until;
use crate::probe::{ArpProber, monotonic_ns};

/// One request of a [`ProbeSession`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Monotonic ns just before sending.
    pub sent_ns: u64,
    /// Every reply to it: (monotonic ns read, MAC it names).
    pub replies: Vec<(u64, [u8; 6])>,
}

/// Every request of a session, per target.
pub type ProbeLogs = BTreeMap<IpAddr, Vec<Probe>>;

/// A tag naming request number `seq` of target `idx` out of `n`.
fn tag_of(seq: usize, idx: usize, n: usize) -> u32 {
    u32::try_from(seq * n + idx).unwrap_or(u32::MAX)
}

/// Sends a request to every target each period and files the replies; the
/// body of one family's thread.
fn pace<T: Copy>(
    targets: &[(T, IpAddr)],
    period: Duration,
    logs: &Mutex<ProbeLogs>,
    stop: &AtomicBool,
    mut send: impl FnMut(T, u32) -> Result<u64, LabError>,
    mut recv: impl FnMut(Duration) -> Result<Option<(u32, IpAddr, u64, [u8; 6])>, LabError>,
) -> Result<(), LabError> {
    let lock = || logs.lock().unwrap_or_else(|p| p.into_inner());
    let n = targets.len();
    if n == 0 {
        return Ok(());
    }
    let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX).max(1);
    let mut next = monotonic_ns();
    let mut seq = 0usize;
    while !stop.load(Ordering::SeqCst) {
        if monotonic_ns() >= next {
            let mut sent = Vec::with_capacity(n);
            for (idx, (t, _)) in targets.iter().enumerate() {
                sent.push(send(*t, tag_of(seq, idx, n))?);
            }
            let mut logs = lock();
            for ((_, ip), sent_ns) in targets.iter().zip(&sent) {
                logs.entry(*ip).or_default().push(Probe {
                    sent_ns: *sent_ns,
                    replies: Vec::new(),
                });
            }
            seq += 1;
            next = sent[0].max(next) + period_ns;
        }
        let wait = Duration::from_nanos(next.saturating_sub(monotonic_ns()));
        if let Some((tag, ip, at_ns, mac)) = recv(wait)? {
            let (seq, idx) = (tag as usize / n, tag as usize % n);
            if targets[idx].1 == ip
                && let Some(p) = lock().get_mut(&ip).and_then(|v| v.get_mut(seq))
            {
                p.replies.push((at_ns, mac));
            }
        }
    }
    Ok(())
}

/// Tagged ARP requests and Neighbor Solicitations for some VIPs every
/// period from the client, on their own threads, keeping every reply.
pub struct ProbeSession {
    logs: Arc<Mutex<ProbeLogs>>,
    /// The target of [`Self::snapshot`] and friends.
    first: IpAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), LabError>>>,
}

impl ProbeSession {
    /// Starts probing `vip` (ARP) from `eth0` in `netns`.
    pub fn start(netns: &str, vip: Ipv4Addr, period: Duration) -> Result<ProbeSession, LabError> {
        Self::start_many(netns, &[IpAddr::V4(vip)], period)
    }

    /// Starts probing every target from `eth0` in `netns`: ARP for IPv4,
    /// NS for IPv6 (sent as the lab client's addresses).
    pub fn start_many(
        netns: &str,
        targets: &[IpAddr],
        period: Duration,
    ) -> Result<ProbeSession, LabError> {
        let first = *targets
            .first()
            .ok_or_else(|| LabError::State("nothing to probe".into()))?;
        let logs: Arc<Mutex<ProbeLogs>> = Arc::new(Mutex::new(
            targets.iter().map(|ip| (*ip, Vec::new())).collect(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut v4: Vec<(Ipv4Addr, IpAddr)> = Vec::new();
        let mut v6: Vec<(Ipv6Addr, IpAddr)> = Vec::new();
        for ip in targets {
            match ip {
                IpAddr::V4(v) => v4.push((*v, *ip)),
                IpAddr::V6(v) => v6.push((*v, *ip)),
            }
        }
        if !v4.is_empty() {
            let arp = run_in(netns, || ArpProber::open("eth0", CLIENT_V4))??;
            let (l, s) = (logs.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                pace(
                    &v4,
                    period,
                    &l,
                    &s,
                    |vip, tag| Ok(arp.send_request(vip, Some(tag))?),
                    |wait| {
                        Ok(arp.recv_reply(wait)?.and_then(|r| {
                            let tag = r.packet.tag()?;
                            Some((
                                tag,
                                IpAddr::V4(r.packet.sender_ip),
                                r.at_ns,
                                r.packet.sender_mac,
                            ))
                        }))
                    },
                )
            }));
        }
        if !v6.is_empty() {
            let ns = run_in(netns, || NsProber::open("eth0", CLIENT_V6))??;
            let (l, s) = (logs.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                pace(
                    &v6,
                    period,
                    &l,
                    &s,
                    |vip, tag| Ok(ns.send_solicitation(vip, Some(tag))?),
                    |wait| {
                        Ok(ns
                            .recv_advertisement(wait)?
                            .and_then(|r| Some((r.tag?, IpAddr::V6(r.target), r.at_ns, r.mac))))
                    },
                )
            }));
        }
        Ok(ProbeSession {
            logs,
            first,
            stop,
            threads,
        })
    }

    fn lock(&self) -> MutexGuard<'_, ProbeLogs> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the logs as they are (without copying them).
    pub fn inspect<R>(&self, f: impl FnOnce(&ProbeLogs) -> R) -> R {
        f(&self.lock())
    }

    /// What was seen so far for the first target.
    pub fn snapshot(&self) -> Vec<Probe> {
        self.lock().get(&self.first).cloned().unwrap_or_default()
    }

    /// Waits up to 15 s until `n` requests for the first target sent after
    /// `after_ns` (monotonic) were answered by `mac`.
    pub fn wait_answers(&self, mac: [u8; 6], after_ns: u64, n: usize) -> Result<(), LabError> {
        wait_until(
            &format!("{n} answers from {}", crate::mac::format(mac)),
            Duration::from_secs(15),
            Duration::from_millis(10),
            || {
                let seen = self.inspect(|logs| {
                    logs.get(&self.first).map_or(0, |log| {
                        log.iter()
                            .rev()
                            .take_while(|p| p.sent_ns > after_ns)
                            .filter(|p| p.replies.iter().any(|r| r.1 == mac))
                            .count()
                    })
                });
                Ok((seen >= n).then_some(()))
            },
        )
    }

    fn join(&mut self) -> Result<(), LabError> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(r) => r?,
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        Ok(())
    }

    /// Stops (after listening `grace` more for late replies); everything
    /// seen for the first target.
    pub fn stop(mut self, grace: Duration) -> Result<Vec<Probe>, LabError> {
        std::thread::sleep(grace);
        self.join()?;
        Ok(self.snapshot())
    }

    /// Stops (after listening `grace` more for late replies); everything
    /// seen, per target.
    pub fn stop_all(mut self, grace: Duration) -> Result<ProbeLogs, LabError> {
        std::thread::sleep(grace);
        self.join()?;
        Ok(std::mem::take(&mut *self.lock()))
    }
}

impl Drop for ProbeSession {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a probe run shows around a change of holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    /// Last reply (read time) from `old` at or after `from_ns`.
    pub last_old_ns: Option<u64>,
    /// First reply from a MAC other than `old` after `from_ns`.
    pub first_new_ns: Option<u64>,
    pub new_mac: Option<[u8; 6]>,
    /// Longest run without any reply, from the send time of the last
    /// answered request before it to the reply that ended it (ns).
    pub outage_ns: u64,
    /// Requests sent after `from_ns` without any reply.
    pub unanswered: usize,
    /// Requests answered by more than one MAC.
    pub doubly_answered: usize,
    pub requests: usize,
}

/// Analyses a probe log from `from_ns` on, `old` being the MAC before.
pub fn takeover(probes: &[Probe], old: [u8; 6], from_ns: u64) -> Takeover {
    let mut t = Takeover {
        last_old_ns: None,
        first_new_ns: None,
        new_mac: None,
        outage_ns: 0,
        unanswered: 0,
        doubly_answered: 0,
        requests: 0,
    };
    let mut last_answer: Option<u64> = None;
    for p in probes.iter().filter(|p| p.sent_ns >= from_ns) {
        t.requests += 1;
        let mut macs: Vec<[u8; 6]> = p.replies.iter().map(|r| r.1).collect();
        macs.dedup();
        if macs.len() > 1 {
            t.doubly_answered += 1;
        }
        for &(at, mac) in &p.replies {
            if mac == old {
                t.last_old_ns = Some(t.last_old_ns.map_or(at, |x| x.max(at)));
            } else if t.first_new_ns.is_none_or(|x| at < x) {
                t.first_new_ns = Some(at);
                t.new_mac = Some(mac);
            }
        }
        match p.replies.first() {
            None => t.unanswered += 1,
            Some(&(at, _)) => {
                if let Some(prev) = last_answer {
                    t.outage_ns = t.outage_ns.max(at.saturating_sub(prev));
                }
                last_answer = Some(p.sent_ns);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeover_finds_the_gap_and_double_answers() {
        let a = [2, 0, 0, 0, 0, 1];
        let b = [2, 0, 0, 0, 0, 2];
        let probes = vec![
            Probe {
                sent_ns: 100,
                replies: vec![(101, a)],
            },
            Probe {
                sent_ns: 200,
                replies: vec![],
            },
            Probe {
                sent_ns: 300,
                replies: vec![],
            },
            Probe {
                sent_ns: 400,
                replies: vec![(402, b)],
            },
            Probe {
                sent_ns: 500,
                replies: vec![(501, b), (502, a)],
            },
        ];
        let t = takeover(&probes, a, 0);
        assert_eq!(t.last_old_ns, Some(502));
        assert_eq!(t.first_new_ns, Some(402));
        assert_eq!(t.new_mac, Some(b));
        assert_eq!(t.outage_ns, 302);
        assert_eq!(t.unanswered, 2);
        assert_eq!(t.doubly_answered, 1);
    }
}
