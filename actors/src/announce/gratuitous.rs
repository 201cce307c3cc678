//! When to send gratuitous ARP / unsolicited NA: a plain schedule the
//! announcer drives. An entry this run starts answering is announced as soon
//! as its fence is open, then again `count - 1` times, `interval` apart.
//! Before every send the caller's check runs (entry still this run's, fence
//! open in the maps, MAC known); when it fails the series ends there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bpf::MacAddr;

/// How gratuitous announcements are repeated for a new entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GratuitousConfig {
    /// Announcements in all (the first as soon as the fence is open).
    pub count: u32,
    pub interval: Duration,
}

impl Default for GratuitousConfig {
    fn default() -> Self {
        GratuitousConfig {
            count: 3,
            interval: Duration::from_secs(1),
        }
    }
}

/// What the check says of an entry right before a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Announce it with this MAC now.
    Send(MacAddr),
    /// This run answers it but its fence is not open (yet): a first
    /// announcement waits; a repeat is dropped.
    Closed,
    /// Not an entry this run answers: forget it.
    Gone,
}

/// The schedule of announcements.
#[derive(Debug, Default)]
pub struct GratuitousSchedule {
    config: GratuitousConfig,
    /// Entries whose first announcement waits for their fence to open.
    waiting: BTreeSet<(IpAddr, u32)>,
    /// Repeats due: (when, sequence) -> (entry, announcements left).
    due: BTreeMap<(Instant, u64), ((IpAddr, u32), u32)>,
    seq: u64,
}

impl GratuitousSchedule {
    pub fn new(config: GratuitousConfig) -> Self {
        GratuitousSchedule {
            config,
            ..Default::default()
        }
    }

    /// Starts a series for an entry (again, if one was running).
    pub fn start(&mut self, entry: (IpAddr, u32)) {
        if self.config.count == 0 {
            return;
        }
        self.due.retain(|_, (e, _)| *e != entry);
        self.waiting.insert(entry);
    }

    /// When the next repeat is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.keys().next().map(|(at, _)| *at)
    }

    /// Entries waiting for their first announcement.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sends what is due at `now`: first announcements whose fence opened
    /// and repeats whose time came, each after `check`; `send` does it.
    pub fn run(
        &mut self,
        now: Instant,
        mut check: impl FnMut(IpAddr, u32) -> Check,
        mut send: impl FnMut(IpAddr, u32, MacAddr),
    ) {
        self.run_waiting(now, &mut check, &mut send);
        self.run_due(now, &mut check, &mut send);
    }

    /// Sends the first announcements of the entries whose fence opened
    /// since (every waiting entry is checked: run it when something that
    /// could open one changed, not on every timer).
    pub fn run_waiting(
        &mut self,
        now: Instant,
        check: &mut impl FnMut(IpAddr, u32) -> Check,
        send: &mut impl FnMut(IpAddr, u32, MacAddr),
    ) {
        let waiting: Vec<(IpAddr, u32)> = self.waiting.iter().copied().collect();
        for entry in waiting {
            match check(entry.0, entry.1) {
                Check::Send(mac) => {
                    self.waiting.remove(&entry);
                    send(entry.0, entry.1, mac);
                    self.queue(now, entry, self.config.count.saturating_sub(1));
                }
                Check::Closed => {}
                Check::Gone => {
                    self.waiting.remove(&entry);
                }
            }
        }
    }

    /// Sends the repeats whose time came.
    pub fn run_due(
        &mut self,
        now: Instant,
        check: &mut impl FnMut(IpAddr, u32) -> Check,
        send: &mut impl FnMut(IpAddr, u32, MacAddr),
    ) {
        while let Some(((at, _), _)) = self.due.first_key_value() {
            if *at > now {
                break;
            }
            let Some((_, (entry, left))) = self.due.pop_first() else {
                break;
            };
            if let Check::Send(mac) = check(entry.0, entry.1) {
                send(entry.0, entry.1, mac);
                self.queue(now, entry, left.saturating_sub(1));
            }
        }
    }

    fn queue(&mut self, now: Instant, entry: (IpAddr, u32), left: u32) {
        if left == 0 {
            return;
        }
        self.seq += 1;
        self.due
            .insert((now + self.config.interval, self.seq), (entry, left));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = [2, 0, 0, 0, 0, 1];

    fn ip() -> IpAddr {
        "192.0.2.10".parse().expect("ip")
    }

    #[test]
    fn waits_for_the_fence_then_repeats_while_it_stays_open() {
        let mut s = GratuitousSchedule::new(GratuitousConfig {
            count: 3,
            interval: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        let mut sent = Vec::new();
        s.start((ip(), 2));
        s.run(t0, |_, _| Check::Closed, |_, _, _| sent.push(()));
        assert!(sent.is_empty(), "nothing before the fence opens");
        assert_eq!(s.waiting(), 1);
        let t1 = t0 + Duration::from_millis(300);
        s.run(t1, |_, _| Check::Send(MAC), |_, _, _| sent.push(()));
        assert_eq!(sent.len(), 1);
        assert_eq!(s.next_due(), Some(t1 + Duration::from_secs(1)));
        s.run(
            t1 + Duration::from_millis(999),
            |_, _| Check::Send(MAC),
            |_, _, _| sent.push(()),
        );
        assert_eq!(sent.len(), 1, "not before the interval");
        for k in 1..=3 {
            s.run(
                t1 + Duration::from_secs(k),
                |_, _| Check::Send(MAC),
                |_, _, _| sent.push(()),
            );
        }
        assert_eq!(sent.len(), 3, "count in all");
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn a_closed_fence_or_a_gone_entry_ends_the_series() {
        let mut s = GratuitousSchedule::new(GratuitousConfig::default());
        let t0 = Instant::now();
        let mut sent = 0;
        s.start((ip(), 2));
        s.run(t0, |_, _| Check::Send(MAC), |_, _, _| sent += 1);
        s.run(
            t0 + Duration::from_secs(1),
            |_, _| Check::Closed,
            |_, _, _| sent += 1,
        );
        assert_eq!(sent, 1);
        assert_eq!(s.next_due(), None, "a closed fence drops the repeats");
        s.start((ip(), 3));
        s.run(t0, |_, _| Check::Gone, |_, _, _| sent += 1);
        assert_eq!((sent, s.waiting()), (1, 0), "a gone entry is forgotten");
    }

    #[test]
    fn starting_again_restarts_the_series() {
        let mut s = GratuitousSchedule::new(GratuitousConfig {
            count: 2,
            interval: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        let mut sent = 0;
        s.start((ip(), 2));
        s.run(t0, |_, _| Check::Send(MAC), |_, _, _| sent += 1);
        s.start((ip(), 2));
        assert_eq!(s.next_due(), None, "the old repeat is dropped");
        s.run(t0, |_, _| Check::Send(MAC), |_, _, _| sent += 1);
        s.run(
            t0 + Duration::from_secs(1),
            |_, _| Check::Send(MAC),
            |_, _, _| sent += 1,
        );
        assert_eq!(sent, 3);
    }
}
