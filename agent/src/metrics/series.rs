//! The series there is one of per Service or per announced IP: responses and
//! gratuitous sent per IP and interface, the announced gauge per Service, IP
//! and interface, and the candidate gauge per Service.
//!
//! They are kept as plain maps and turned into metric families only when
//! scraped. A prometheus vec keeps every child as label pairs, a hash entry
//! and a shared counter, about half a KiB per series: at 5,000 Services a
//! holder had ~12,500 such series (~7 MiB) for what these maps hold in a
//! fraction of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

/// (IP, interface) of a datapath entry.
type Entry = (IpAddr, String);

#[derive(Default)]
struct State {
    /// The last absolute map counter and the counter's total, per entry.
    responses: HashMap<Entry, (u64, u64)>,
    /// Gratuitous ARP / NA sent per entry since the agent started.
    gratuitous: HashMap<Entry, u64>,
    /// What each Service is announced with here (a Vec: most have one
    /// entry, and a set of one costs a whole tree node).
    announced: BTreeMap<String, Vec<Entry>>,
    /// Services this node is a candidate for.
    candidates: BTreeSet<String>,
}

/// The collector of the per-Service and per-IP series: register a clone of
/// it (clones share their state).
#[derive(Clone)]
pub struct ServiceSeries {
    inner: Arc<Inner>,
}

struct Inner {
    responses: Desc,
    gratuitous: Desc,
    announced: Desc,
    candidate: Desc,
    state: Mutex<State>,
}

pub const RESPONSES: &str = "l2announcer_responses_sent_total";
pub const GRATUITOUS: &str = "l2announcer_gratuitous_sent_total";
pub const ANNOUNCED: &str = "l2announcer_announced";
pub const CANDIDATE: &str = "l2announcer_service_candidate";

fn desc(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Desc> {
    Desc::new(
        name.to_string(),
        help.to_string(),
        labels.iter().map(|l| l.to_string()).collect(),
        HashMap::new(),
    )
}

/// Label pairs, given in the order of their names (as the text format
/// prints them).
fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut l = LabelPair::default();
            l.set_name(name.to_string());
            l.set_value(value.to_string());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = Counter::default();
    // Counts stay far below 2^53, where f64 is exact.
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

fn family(desc: &Desc, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(desc.fq_name.clone());
    f.set_help(desc.help.clone());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

impl ServiceSeries {
    pub fn new() -> prometheus::Result<ServiceSeries> {
        Ok(ServiceSeries {
            inner: Arc::new(Inner {
                responses: desc(
                    RESPONSES,
                    "ARP replies and NDP advertisements sent by the datapath, by IP and interface.",
                    &["ip", "interface"],
                )?,
                gratuitous: desc(
                    GRATUITOUS,
                    "Gratuitous ARP and unsolicited neighbor advertisements sent, by IP and interface.",
                    &["ip", "interface"],
                )?,
                announced: desc(
                    ANNOUNCED,
                    "1 for every Service, IP and interface this node announces now.",
                    &["service", "ip", "interface"],
                )?,
                candidate: desc(
                    CANDIDATE,
                    "1 for every Service this node is a candidate to announce (selected by a policy, with IPs and interfaces here).",
                    &["service"],
                )?,
                state: Mutex::new(State::default()),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Plain maps: a panic while holding the lock leaves them usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mirrors the datapath's absolute per-entry response counters. Each
    /// reading adds its increase since the last one; a reading lower than
    /// the last (the map entry was re-created) counts from zero. Entries
    /// missing from `entries` are dropped from the exposition.
    pub fn set_responses(&self, entries: &[(IpAddr, String, u64)]) {
        let mut state = self.state();
        let mut seen = HashMap::with_capacity(entries.len());
        for (ip, interface, value) in entries {
            let key = (*ip, interface.clone());
            let (last, total) = state.responses.get(&key).copied().unwrap_or((0, 0));
            let delta = if *value >= last { value - last } else { *value };
            seen.insert(key, (*value, total + delta));
        }
        state.responses = seen;
    }

    pub fn gratuitous_sent(&self, ip: IpAddr, interface: &str) {
        *self
            .state()
            .gratuitous
            .entry((ip, interface.to_string()))
            .or_default() += 1;
    }

    /// `service` is announced here with `entries` now (none: not at all).
    pub fn announced(&self, service: String, entries: Vec<Entry>) {
        let mut state = self.state();
        if entries.is_empty() {
            state.announced.remove(&service);
        } else {
            state.announced.insert(service, entries);
        }
    }

    pub fn candidate(&self, service: &str, candidate: bool) {
        let mut state = self.state();
        if candidate {
            state.candidates.insert(service.to_string());
        } else {
            state.candidates.remove(service);
        }
    }
}

impl Collector for ServiceSeries {
    fn desc(&self) -> Vec<&Desc> {
        let i = &self.inner;
        vec![&i.responses, &i.gratuitous, &i.announced, &i.candidate]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let state = self.state();
        let per_entry = |counts: &mut dyn Iterator<Item = (&Entry, u64)>| {
            counts
                .map(|((ip, interface), n)| {
                    counter(&[("interface", interface), ("ip", &ip.to_string())], n)
                })
                .collect::<Vec<_>>()
        };
        let responses = per_entry(&mut state.responses.iter().map(|(k, (_, total))| (k, *total)));
        let gratuitous = per_entry(&mut state.gratuitous.iter().map(|(k, n)| (k, *n)));
        let announced = state
            .announced
            .iter()
            .flat_map(|(service, entries)| {
                entries.iter().map(move |(ip, interface)| {
                    gauge(
                        &[
                            ("interface", interface),
                            ("ip", &ip.to_string()),
                            ("service", service),
                        ],
                        1.0,
                    )
                })
            })
            .collect();
        let candidates = state
            .candidates
            .iter()
            .map(|service| gauge(&[("service", service)], 1.0))
            .collect();
        let i = &self.inner;
        vec![
            family(&i.responses, MetricType::COUNTER, responses),
            family(&i.gratuitous, MetricType::COUNTER, gratuitous),
            family(&i.announced, MetricType::GAUGE, announced),
            family(&i.candidate, MetricType::GAUGE, candidates),
        ]
    }
}
