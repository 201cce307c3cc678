//! Per-Service leader election over Kubernetes Leases, with client-go's
//! semantics, as plain values and functions (the LeaseActor only performs the
//! requests these decide on).
//!
//! * A lease is free when it has no holder, or when its holder has not been
//!   seen to change it for a whole lease duration *by the local clock*: the
//!   candidate measures from the moment it observed the last change, never
//!   from the timestamps written by another node's clock.
//! * Acquiring keeps `acquireTime` and `leaseTransitions` when the holder is
//!   already us (a restarted agent keeps its leases), otherwise stamps a new
//!   `acquireTime` and counts one transition.
//! * The holder renews every retry period; if no renewal succeeded within the
//!   renew deadline it stops leading, which is always before any candidate may
//!   take over (renew deadline < lease duration).
//! * Releasing clears the holder and sets a one-second duration, as client-go.

use std::time::{Duration, Instant};

/// The Lease fields the election reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    pub holder: String,
    pub lease_duration_seconds: i32,
    /// RFC 3339 with microseconds, as client-go writes MicroTime.
    pub acquire_time: Option<String>,
    pub renew_time: Option<String>,
    pub transitions: i32,
}

/// The timing options, validated by the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// The `leaseDurationSeconds` written into leases (at least 1).
    pub fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// What this node last saw of the Lease object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub record: LeaseRecord,
    pub resource_version: String,
    /// Local time at which the record was first seen in this form.
    pub at: Instant,
}

/// The next request to make for one election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Create the lease (it does not exist) with this record.
    Create(LeaseRecord),
    /// Update the lease from `resource_version` to this record.
    Update {
        record: LeaseRecord,
        resource_version: String,
    },
    /// Nothing to do before this instant.
    WaitUntil(Instant),
}

/// One Service's election, from this node's point of view.
#[derive(Debug, Clone)]
pub struct Election {
    pub me: String,
    pub timing: LeaseTiming,
    observed: Option<Observed>,
    /// Since when the Lease object is known to be absent.
    absent_since: Option<Instant>,
    /// When the last successful acquire/renew request was *sent*.
    last_success_sent: Option<Instant>,
    /// When the last attempt was made, to space attempts by retry period.
    last_attempt: Option<Instant>,
    /// A create was refused because the Lease exists, and this node has
    /// not seen it yet: wait for the watch instead of creating again.
    exists_unseen: bool,
}

impl Election {
    pub fn new(me: impl Into<String>, timing: LeaseTiming) -> Self {
        Election {
            me: me.into(),
            timing,
            observed: None,
            absent_since: None,
            last_success_sent: None,
            last_attempt: None,
            exists_unseen: false,
        }
    }

    pub fn observed(&self) -> Option<&Observed> {
        self.observed.as_ref()
    }

    /// Records what a watch event, get or write answer showed. The
    /// observation time moves only when the record itself changed, so a
    /// holder that stopped renewing is seen to expire on schedule.
    pub fn observe(&mut self, record: LeaseRecord, resource_version: String, now: Instant) {
        self.absent_since = None;
        self.exists_unseen = false;
        let changed = self.observed.as_ref().is_none_or(|o| o.record != record);
        let at = match &self.observed {
            Some(o) if !changed => o.at,
            _ => now,
        };
        self.observed = Some(Observed {
            record,
            resource_version,
            at,
        });
    }

    /// A create was refused: the Lease exists though this node has not seen
    /// it. No further create until it is seen (or seen deleted).
    pub fn exists_unseen(&mut self) {
        self.exists_unseen = true;
        self.absent_since = None;
        self.observed = None;
    }

    /// Records that the Lease does not exist (deleted, or never created).
    pub fn observe_absent(&mut self, now: Instant) {
        self.exists_unseen = false;
        self.observed = None;
        self.absent_since.get_or_insert(now);
    }

    /// Whether this node currently leads: the observed holder is us and a
    /// renewal succeeded within the renew deadline.
    pub fn is_leader(&self, now: Instant) -> bool {
        let holder_is_me = self
            .observed
            .as_ref()
            .is_some_and(|o| o.record.holder == self.me);
        holder_is_me
            && self
                .last_success_sent
                .is_some_and(|t| now.saturating_duration_since(t) < self.timing.renew_deadline)
    }

    /// Until when the datapath may answer for this lease: the sending time
    /// of the last successful renewal plus the renew deadline.
    pub fn fence_until(&self) -> Option<Instant> {
        self.last_success_sent
            .map(|t| t + self.timing.renew_deadline)
    }

    /// When the observed lease becomes free for us to take.
    pub fn free_at(&self) -> Option<Instant> {
        if let Some(since) = self.absent_since {
            return Some(since);
        }
        let o = self.observed.as_ref()?;
        if o.record.holder.is_empty() || o.record.holder == self.me {
            return Some(o.at);
        }
        let secs = u64::try_from(o.record.lease_duration_seconds.max(1)).unwrap_or(1);
        Some(o.at + Duration::from_secs(secs))
    }

    /// Decides the next request. `now_rfc3339` is the wall-clock stamp to
    /// write into acquire/renew times.
    pub fn decide(&self, now: Instant, now_rfc3339: &str) -> Decision {
        if let Some(last) = self.last_attempt {
            let next = last + self.timing.retry_period;
            if next > now {
                return Decision::WaitUntil(next);
            }
        }
        if self.exists_unseen {
            return Decision::WaitUntil(now + self.timing.retry_period);
        }
        if self.absent_since.is_some() || self.observed.is_none() {
            return Decision::Create(LeaseRecord {
                holder: self.me.clone(),
                lease_duration_seconds: self.timing.duration_seconds(),
                acquire_time: Some(now_rfc3339.to_string()),
                renew_time: Some(now_rfc3339.to_string()),
                transitions: 0,
            });
        }
        let Some(o) = self.observed.as_ref() else {
            return Decision::WaitUntil(now + self.timing.retry_period);
        };
        let current = &o.record;
        if current.holder == self.me {
            return Decision::Update {
                record: LeaseRecord {
                    holder: self.me.clone(),
                    lease_duration_seconds: self.timing.duration_seconds(),
                    acquire_time: current
                        .acquire_time
                        .clone()
                        .or_else(|| Some(now_rfc3339.to_string())),
                    renew_time: Some(now_rfc3339.to_string()),
                    transitions: current.transitions,
                },
                resource_version: o.resource_version.clone(),
            };
        }
        match self.free_at() {
            Some(free) if free <= now => Decision::Update {
                record: LeaseRecord {
                    holder: self.me.clone(),
                    lease_duration_seconds: self.timing.duration_seconds(),
                    acquire_time: Some(now_rfc3339.to_string()),
                    renew_time: Some(now_rfc3339.to_string()),
                    transitions: current.transitions.saturating_add(1),
                },
                resource_version: o.resource_version.clone(),
            },
            Some(free) => Decision::WaitUntil(free),
            None => Decision::WaitUntil(now + self.timing.retry_period),
        }
    }

    /// Records an attempt made at `sent` (before the answer arrives).
    pub fn attempted(&mut self, sent: Instant) {
        self.last_attempt = Some(sent);
    }

    /// Records the answer to a successful write sent at `sent`.
    pub fn succeeded(
        &mut self,
        record: LeaseRecord,
        resource_version: String,
        sent: Instant,
        now: Instant,
    ) {
        self.observe(record, resource_version, now);
        self.last_success_sent = Some(sent);
    }

    /// Stops leading at once (release or deselection).
    pub fn step_down(&mut self) {
        self.last_success_sent = None;
    }

    /// The record that releases a lease this node holds, as client-go writes
    /// it: no holder, one-second duration, times and transitions kept.
    pub fn release_record(&self, now_rfc3339: &str) -> Option<(LeaseRecord, String)> {
        let o = self.observed.as_ref()?;
        if o.record.holder != self.me {
            return None;
        }
        Some((
            LeaseRecord {
                holder: String::new(),
                lease_duration_seconds: 1,
                acquire_time: Some(now_rfc3339.to_string()),
                renew_time: Some(now_rfc3339.to_string()),
                transitions: o.record.transitions,
            },
            o.resource_version.clone(),
        ))
    }
}

/// The Lease name Cilium uses for a Service.
pub fn lease_name(namespace: &str, name: &str) -> String {
    format!("cilium-l2announce-{namespace}-{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-11-22T07:00:00.000000Z";

    fn timing() -> LeaseTiming {
        LeaseTiming {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(1),
            retry_period: Duration::from_millis(200),
        }
    }

    fn held_by(holder: &str, transitions: i32) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            lease_duration_seconds: 3,
            acquire_time: Some("2026-11-22T06:00:00.000000Z".into()),
            renew_time: Some("2026-11-22T06:59:59.000000Z".into()),
            transitions,
        }
    }

    #[test]
    fn absent_lease_is_created_with_us_as_holder() {
        let mut e = Election::new("node-a", timing());
        let now = Instant::now();
        e.observe_absent(now);
        assert_eq!(e.free_at(), Some(now));
        e.observe_absent(now + Duration::from_secs(1));
        assert_eq!(e.free_at(), Some(now), "free since the first sighting");
        match e.decide(now, T) {
            Decision::Create(r) => {
                assert_eq!(r.holder, "node-a");
                assert_eq!(r.lease_duration_seconds, 3);
                assert_eq!(r.transitions, 0);
                assert_eq!(r.acquire_time.as_deref(), Some(T));
            }
            other => panic!("expected create, got {other:?}"),
        }
    }

    #[test]
    fn held_lease_expires_by_local_observation_time() {
        let mut e = Election::new("node-b", timing());
        let t0 = Instant::now();
        e.observe(held_by("node-a", 2), "10".into(), t0);
        assert_eq!(
            e.decide(t0, T),
            Decision::WaitUntil(t0 + Duration::from_secs(3))
        );
        // The same record seen again later does not move the expiry.
        e.observe(
            held_by("node-a", 2),
            "10".into(),
            t0 + Duration::from_secs(2),
        );
        let t3 = t0 + Duration::from_secs(3);
        match e.decide(t3, T) {
            Decision::Update {
                record,
                resource_version,
            } => {
                assert_eq!(record.holder, "node-b");
                assert_eq!(record.transitions, 3);
                assert_eq!(record.acquire_time.as_deref(), Some(T));
                assert_eq!(resource_version, "10");
            }
            other => panic!("expected takeover, got {other:?}"),
        }
        // A renewal by the holder (a changed record) restarts the clock.
        let t2 = t0 + Duration::from_secs(2);
        let mut renewed = held_by("node-a", 2);
        renewed.renew_time = Some("later".into());
        e.observe(renewed, "11".into(), t2);
        assert_eq!(
            e.decide(t3, T),
            Decision::WaitUntil(t2 + Duration::from_secs(3))
        );
    }

    #[test]
    fn released_lease_is_free_at_once() {
        let mut e = Election::new("node-b", timing());
        let t0 = Instant::now();
        let mut released = held_by("", 4);
        released.lease_duration_seconds = 1;
        e.observe(released, "12".into(), t0);
        assert!(
            matches!(e.decide(t0, T), Decision::Update { record, .. } if record.transitions == 5)
        );
    }

    #[test]
    fn our_own_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let mut e = Election::new("node-a", timing());
        let t0 = Instant::now();
        e.observe(held_by("node-a", 7), "20".into(), t0);
        match e.decide(t0, T) {
            Decision::Update { record, .. } => {
                assert_eq!(record.transitions, 7);
                assert_eq!(
                    record.acquire_time.as_deref(),
                    Some("2026-11-22T06:00:00.000000Z")
                );
                assert_eq!(record.renew_time.as_deref(), Some(T));
            }
            other => panic!("expected renew, got {other:?}"),
        }
    }

    #[test]
    fn leadership_and_fence_end_at_the_renew_deadline_before_expiry() {
        let mut e = Election::new("node-a", timing());
        let sent = Instant::now();
        let answered = sent + Duration::from_millis(30);
        e.succeeded(held_by("node-a", 0), "5".into(), sent, answered);
        assert!(e.is_leader(answered));
        assert_eq!(e.fence_until(), Some(sent + Duration::from_secs(1)));
        assert!(e.is_leader(sent + Duration::from_millis(999)));
        assert!(!e.is_leader(sent + Duration::from_secs(1)));
        // Another node, having observed the same renewal no earlier than it
        // was sent, may take over only a whole lease duration later.
        let mut other = Election::new("node-b", timing());
        other.observe(held_by("node-a", 0), "5".into(), answered);
        assert!(other.free_at().expect("held") > e.fence_until().expect("fenced"));
        e.step_down();
        assert!(!e.is_leader(answered));
    }

    #[test]
    fn attempts_are_spaced_by_the_retry_period() {
        let mut e = Election::new("node-a", timing());
        let t0 = Instant::now();
        e.observe_absent(t0);
        e.attempted(t0);
        assert_eq!(
            e.decide(t0 + Duration::from_millis(100), T),
            Decision::WaitUntil(t0 + Duration::from_millis(200))
        );
        assert!(matches!(
            e.decide(t0 + Duration::from_millis(200), T),
            Decision::Create(_)
        ));
    }

    #[test]
    fn release_only_what_we_hold() {
        let mut e = Election::new("node-a", timing());
        e.observe(held_by("node-b", 1), "3".into(), Instant::now());
        assert_eq!(e.release_record(T), None);
        e.observe(held_by("node-a", 1), "4".into(), Instant::now());
        let (r, rv) = e.release_record(T).expect("ours");
        assert_eq!(
            (r.holder.as_str(), r.lease_duration_seconds, r.transitions),
            ("", 1, 1)
        );
        assert_eq!(rv, "4");
    }

    #[test]
    fn a_refused_create_waits_for_the_lease_to_be_seen() {
        let mut e = Election::new("node-b", timing());
        let t0 = Instant::now();
        e.observe_absent(t0);
        assert!(matches!(e.decide(t0, T), Decision::Create(_)));
        e.attempted(t0);
        e.exists_unseen();
        let later = t0 + Duration::from_secs(1);
        assert!(
            matches!(e.decide(later, T), Decision::WaitUntil(_)),
            "no second create"
        );
        e.observe(held_by("node-a", 0), "3".into(), later);
        assert!(
            matches!(e.decide(later, T), Decision::WaitUntil(_)),
            "held by node-a"
        );
    }

    #[test]
    fn lease_names_match_cilium() {
        assert_eq!(
            lease_name("default", "deathstar"),
            "cilium-l2announce-default-deathstar"
        );
    }
}
