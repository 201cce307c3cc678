//! The object store: every kind's objects, one global resourceVersion
//! counter (like etcd's revision), a bounded history of changes for watches
//! and consistent paged lists, and the registered watchers.
//!
//! All methods are synchronous and run under the server's store mutex, so a
//! write, its history entry and its delivery to watchers are one atomic step.
//!
//! Besides the bounded history that watches read, the store keeps a write
//! log for tests: every committed change with its CLOCK_MONOTONIC commit
//! time and the User-Agent of the request that made it. Compaction does not
//! touch it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::resources::{ResourceInfo, builtins, from_crd};
use crate::schema::{check_custom, decode_builtin, validate_builtin};
use crate::status::{ApiStatus, Subject};

/// (group, plural).
pub type ResKey = (String, String);
/// (namespace, name); namespace is "" for cluster-scoped objects.
pub type ObjKey = (String, String);

/// One listed object with its key.
pub type Listed = (ObjKey, Arc<Value>);

/// The kind of a change, as named in watch events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed change.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub res: ResKey,
    pub key: ObjKey,
    pub kind: ChangeKind,
    /// The object after the change (for deletes: the last state, carrying
    /// the delete's resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change (None for ADDED).
    pub prev: Option<Arc<Value>>,
    /// When it was committed.
    pub committed_at: Instant,
}

impl ChangeKind {
    /// The watch event type.
    pub fn event_type(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One committed write, as the store applied it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteRecord {
    /// The resourceVersion the write got.
    pub resource_version: u64,
    /// CLOCK_MONOTONIC in nanoseconds at the commit (the clock of
    /// `std::time::Instant`; see [`crate::monotonic_ns`]).
    pub committed_mono_ns: u64,
    /// "ADDED", "MODIFIED" or "DELETED".
    #[serde(rename = "type")]
    pub kind: String,
    pub group: String,
    /// Resource plural.
    pub resource: String,
    /// "" for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
    /// User-Agent of the request that made the write ("" for the server's
    /// own writes, e.g. the well-known namespaces at start).
    pub user_agent: String,
    /// The object after the write (for deletes: its last state).
    pub object: Value,
}

/// A write log entry; the object is shared with the history.
struct LoggedWrite {
    change: Arc<Change>,
    committed_mono_ns: u64,
    user_agent: Arc<str>,
}

/// How many writes the write log keeps before dropping the oldest tenth.
const WRITE_LOG_LIMIT: usize = 200_000;

/// What a new watch starts with.
pub struct WatchStart {
    /// Objects to send as synthetic ADDED events (watch from "" / "0").
    pub initial: Vec<Arc<Value>>,
    /// Retained changes after the requested resourceVersion.
    pub backlog: Vec<Arc<Change>>,
    /// The store's resourceVersion when the watch was registered.
    pub rv: u64,
    pub receiver: mpsc::UnboundedReceiver<Arc<Change>>,
}

struct Watcher {
    res: ResKey,
    ns: Option<String>,
    tx: mpsc::UnboundedSender<Arc<Change>>,
}

/// Which part of an object a write replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTarget {
    Main,
    Status,
}

/// Result of a successful write.
#[derive(Debug)]
pub struct WriteOutcome {
    pub object: Value,
    pub created: bool,
    /// Unknown fields that were dropped (for `Warning` headers).
    pub warnings: Vec<String>,
}

/// The whole in-memory state.
pub struct Store {
    rv: u64,
    resources: BTreeMap<ResKey, ResourceInfo>,
    objects: HashMap<ResKey, BTreeMap<ObjKey, Arc<Value>>>,
    history: VecDeque<Arc<Change>>,
    compacted: u64,
    history_limit: usize,
    watchers: Vec<Watcher>,
    uid_seed: u64,
    counter: u64,
    next_cluster_ip: u32,
    next_node_port: u32,
    writes: Vec<LoggedWrite>,
    /// User-Agent of the request now writing (set with the lock taken).
    writer: Arc<str>,
}

/// Now as RFC 3339 UTC with seconds precision, as metav1.Time serialises.
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    // Whole seconds are always in range; fall back to the precise time.
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        // Just ensured above that metadata is an object.
        _ => unreachable!("metadata is an object"),
    }
}

/// RFC 1123 subdomain (most names).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// RFC 1123 label (namespaces); RFC 1035 label additionally starts with a
/// letter (services).
pub fn is_dns_label(s: &str, rfc1035: bool) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && (!rfc1035 || s.starts_with(|c: char| c.is_ascii_lowercase()))
}

fn spec_part(obj: &Value, status_subresource: bool) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        if status_subresource {
            m.remove("status");
        }
    }
    v
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        let mut store = Store {
            rv: 0,
            resources: BTreeMap::new(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            history_limit: history_limit.max(1),
            watchers: Vec::new(),
            uid_seed: seed,
            counter: 0,
            next_cluster_ip: 10,
            next_node_port: 30000,
            writes: Vec::new(),
            writer: Arc::from(""),
        };
        for r in builtins() {
            store.resources.insert(Self::res_key(&r), r);
        }
        let ns = store.resource("", "namespaces");
        if let Some(ns) = ns {
            for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let obj =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                // Creating the well-known namespaces in an empty store cannot fail.
                let _ = store.create(&ns, "", obj, false);
            }
        }
        store
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Names the client whose request the next writes belong to.
    pub fn set_writer(&mut self, user_agent: &str) {
        if *self.writer != *user_agent {
            self.writer = Arc::from(user_agent);
        }
    }

    /// Every write committed so far (oldest first, the last 200,000 at most).
    pub fn write_log(&self) -> Vec<WriteRecord> {
        self.writes
            .iter()
            .map(|w| WriteRecord {
                resource_version: w.change.rv,
                committed_mono_ns: w.committed_mono_ns,
                kind: w.change.kind.event_type().to_string(),
                group: w.change.res.0.clone(),
                resource: w.change.res.1.clone(),
                namespace: w.change.key.0.clone(),
                name: w.change.key.1.clone(),
                user_agent: w.user_agent.to_string(),
                object: (*w.change.object).clone(),
            })
            .collect()
    }

    pub fn clear_write_log(&mut self) {
        self.writes.clear();
    }

    pub fn resource(&self, group: &str, plural: &str) -> Option<ResourceInfo> {
        self.resources
            .get(&(group.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn resources(&self) -> Vec<ResourceInfo> {
        self.resources.values().cloned().collect()
    }

    fn next_uid(&mut self) -> String {
        self.counter += 1;
        let a = self
            .uid_seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(self.counter.wrapping_mul(1_442_695_040_888_963_407));
        let b = a.rotate_left(29) ^ self.counter;
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a & 0xfff) as u16,
            (b >> 52) as u16 & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }

    fn random_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.counter += 1;
        let mut x = self.uid_seed ^ self.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut s = String::new();
        for _ in 0..5 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push(ALPHABET[(x % ALPHABET.len() as u64) as usize] as char);
        }
        s
    }

    /// Assigns the next resourceVersion, stores the change, records it and
    /// hands it to watchers.
    fn commit(
        &mut self,
        res: &ResKey,
        key: ObjKey,
        kind: ChangeKind,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let obj = Arc::new(obj);
        let map = self.objects.entry(res.clone()).or_default();
        if kind == ChangeKind::Deleted {
            map.remove(&key);
        } else {
            map.insert(key.clone(), obj.clone());
        }
        let change = Arc::new(Change {
            rv: self.rv,
            res: res.clone(),
            key,
            kind,
            object: obj.clone(),
            prev,
            committed_at: Instant::now(),
        });
        if self.writes.len() >= WRITE_LOG_LIMIT {
            self.writes.drain(..WRITE_LOG_LIMIT / 10);
        }
        self.writes.push(LoggedWrite {
            change: change.clone(),
            committed_mono_ns: crate::monotonic_ns(),
            user_agent: self.writer.clone(),
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        self.watchers.retain(|w| {
            if w.res != change.res || w.ns.as_ref().is_some_and(|ns| *ns != change.key.0) {
                return !w.tx.is_closed();
            }
            w.tx.send(change.clone()).is_ok()
        });
        obj
    }

    /// The key of resource `res` in the store.
    fn res_key(res: &ResourceInfo) -> ResKey {
        (res.group.clone(), res.plural.clone())
    }

    /// The key of object `name` in `ns` (ignored for a cluster-scoped
    /// resource).
    fn obj_key(res: &ResourceInfo, ns: &str, name: &str) -> ObjKey {
        let ns = if res.namespaced { ns } else { "" };
        (ns.to_string(), name.to_string())
    }

    /// The stored object `key` of resource `res_key`.
    fn stored(&self, res_key: &ResKey, key: &ObjKey) -> Option<Arc<Value>> {
        self.objects.get(res_key).and_then(|m| m.get(key)).cloned()
    }

    fn subject<'a>(res: &'a ResourceInfo, name: &'a str) -> Subject<'a> {
        Subject {
            group: &res.group,
            plural: &res.plural,
            name,
        }
    }

    pub fn get(&self, res: &ResourceInfo, ns: &str, name: &str) -> Result<Arc<Value>, ApiStatus> {
        self.stored(&Self::res_key(res), &(ns.to_string(), name.to_string()))
            .ok_or_else(|| ApiStatus::not_found(Self::subject(res, name)))
    }

    /// Objects of a kind (optionally one namespace), sorted by namespace and
    /// name, as of `at` (current state when None). Returns the list's
    /// resourceVersion.
    pub fn list(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        at: Option<u64>,
    ) -> Result<(Vec<Listed>, u64), ApiStatus> {
        let key = Self::res_key(res);
        let mut state: BTreeMap<ObjKey, Arc<Value>> =
            self.objects.get(&key).cloned().unwrap_or_default();
        let mut list_rv = self.rv;
        if let Some(at) = at.filter(|at| *at < self.rv) {
            if at < self.compacted {
                return Err(ApiStatus::expired(format!(
                    "too old resource version: {at} ({})",
                    self.compacted
                )));
            }
            for ch in self.history.iter().rev().take_while(|c| c.rv > at) {
                if ch.res != key {
                    continue;
                }
                match (&ch.kind, &ch.prev) {
                    (ChangeKind::Added, _) => {
                        state.remove(&ch.key);
                    }
                    (_, Some(prev)) => {
                        state.insert(ch.key.clone(), prev.clone());
                    }
                    (_, None) => {}
                }
            }
            list_rv = at;
        }
        let items = state
            .into_iter()
            .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
            .collect();
        Ok((items, list_rv))
    }

    /// Registers a watch. `from` None means "current state first" (watch
    /// from "" or "0"). A `from` older than the retained history is Expired.
    pub fn watch(
        &mut self,
        res: &ResourceInfo,
        ns: Option<&str>,
        from: Option<u64>,
    ) -> Result<WatchStart, ApiStatus> {
        let key = Self::res_key(res);
        let (tx, receiver) = mpsc::unbounded_channel();
        let mut initial = Vec::new();
        let mut backlog = Vec::new();
        match from {
            None => {
                let (items, _) = self.list(res, ns, None)?;
                initial = items.into_iter().map(|(_, v)| v).collect();
            }
            Some(from) => {
                if from < self.compacted {
                    return Err(ApiStatus::expired(format!(
                        "too old resource version: {from} ({})",
                        self.compacted
                    )));
                }
                backlog = self
                    .history
                    .iter()
                    .filter(|c| c.rv > from && c.res == key && ns.is_none_or(|ns| ns == c.key.0))
                    .cloned()
                    .collect();
            }
        }
        self.watchers.push(Watcher {
            res: key,
            ns: ns.map(str::to_string),
            tx,
        });
        Ok(WatchStart {
            initial,
            backlog,
            rv: self.rv,
            receiver,
        })
    }

    /// Ends every watch (their streams finish; clients re-watch).
    pub fn drop_watches(&mut self) -> usize {
        let n = self.watchers.len();
        self.watchers.clear();
        n
    }

    pub fn watcher_count(&mut self) -> usize {
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.len()
    }

    /// Forgets all history: watches and continue tokens from any earlier
    /// resourceVersion get 410 Expired.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Decodes, prunes and validates an incoming object; the warnings name
    /// the fields dropped as unknown (an error instead when `strict`).
    fn decode(
        &self,
        res: &ResourceInfo,
        version: &str,
        obj: Value,
        strict: bool,
    ) -> Result<(Value, Vec<String>), ApiStatus> {
        let name = meta_str(&obj, "name").to_string();
        let version = version.rsplit('/').next().unwrap_or(version);
        let (obj, unknown, errors) = if res.custom {
            let mut obj = obj;
            let Some(schema) = res.schema(version) else {
                return Ok((obj, Vec::new()));
            };
            let outcome = check_custom(&mut obj, schema);
            (obj, outcome.pruned, outcome.errors)
        } else {
            let (obj, dropped) =
                decode_builtin(&res.group, &res.plural, &obj).map_err(ApiStatus::bad_request)?;
            (obj, dropped, Vec::new())
        };
        let warnings: Vec<String> = unknown
            .iter()
            .map(|p| format!("unknown field \"{p}\""))
            .collect();
        if strict && !warnings.is_empty() {
            return Err(ApiStatus::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                warnings.join(", "),
                kind = res.kind,
            )));
        }
        if !errors.is_empty() {
            return Err(ApiStatus::invalid(&res.kind, &res.group, &name, &errors));
        }
        Ok((obj, warnings))
    }

    fn validate_name(res: &ResourceInfo, name: &str) -> Result<(), ApiStatus> {
        let (ok, rule) = match (res.group.as_str(), res.plural.as_str()) {
            ("", "namespaces") => (
                is_dns_label(name, false),
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            ),
            ("", "services") => (
                is_dns_label(name, true),
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            ),
            _ => (
                is_dns_subdomain(name),
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(ApiStatus::invalid(
                &res.kind,
                &res.group,
                name,
                &[(
                    "metadata.name".into(),
                    format!("Invalid value: {name:?}: {rule}"),
                )],
            ))
        }
    }

    fn apply_defaults(&mut self, res: &ResourceInfo, obj: &mut Value) {
        match (res.group.as_str(), res.plural.as_str()) {
            ("", "services") => {
                let spec = obj
                    .as_object_mut()
                    .map(|m| m.entry("spec").or_insert(json!({})));
                let Some(spec) = spec.and_then(Value::as_object_mut) else {
                    return;
                };
                let ty = spec
                    .entry("type")
                    .or_insert(json!("ClusterIP"))
                    .as_str()
                    .unwrap_or("ClusterIP")
                    .to_string();
                if ty != "ExternalName" {
                    if !spec.contains_key("clusterIP") {
                        let n = self.next_cluster_ip;
                        self.next_cluster_ip += 1;
                        spec.insert(
                            "clusterIP".into(),
                            json!(format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff)),
                        );
                    }
                    let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
                    spec.entry("clusterIPs").or_insert(json!([ip]));
                    spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
                    spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
                    spec.entry("internalTrafficPolicy")
                        .or_insert(json!("Cluster"));
                }
                spec.entry("sessionAffinity").or_insert(json!("None"));
                let external = ty == "LoadBalancer" || ty == "NodePort";
                let has_external_ips = spec
                    .get("externalIPs")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty());
                if external || (ty == "ClusterIP" && has_external_ips) {
                    spec.entry("externalTrafficPolicy")
                        .or_insert(json!("Cluster"));
                }
                if ty == "LoadBalancer" {
                    spec.entry("allocateLoadBalancerNodePorts")
                        .or_insert(json!(true));
                }
                let alloc_node_ports =
                    external && spec.get("allocateLoadBalancerNodePorts") != Some(&json!(false));
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        p.entry("protocol").or_insert(json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            p.entry("targetPort").or_insert(port);
                        }
                        if alloc_node_ports && !p.contains_key("nodePort") {
                            p.insert("nodePort".into(), json!(self.next_node_port));
                            self.next_node_port += 1;
                        }
                    }
                }
            }
            ("", "namespaces") => {
                let name = meta_str(obj, "name").to_string();
                let meta = meta_mut(obj);
                let labels = meta.entry("labels").or_insert(json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
            ("", "pods") => {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
            _ => {}
        }
    }

    fn crd_status(crd: &mut Value) {
        let now = now_rfc3339();
        let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let stored: Vec<Value> = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                    .filter_map(|v| v.get("name").cloned())
                    .collect()
            })
            .unwrap_or_default();
        crd["status"] = json!({
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now,
                 "reason": "NoConflicts", "message": "no conflicts found"},
                {"type": "Established", "status": "True", "lastTransitionTime": now,
                 "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
            ],
            "storedVersions": stored,
        });
    }

    /// Registers (or re-registers) the kind a CRD declares.
    fn register_crd(&mut self, crd: &Value, existing: bool) -> Result<(), ApiStatus> {
        let name = meta_str(crd, "name").to_string();
        let info = from_crd(crd).map_err(|errs| {
            ApiStatus::invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                &name,
                &errs,
            )
        })?;
        let key = Self::res_key(&info);
        match self.resources.get(&key) {
            Some(old) if !old.custom => {
                return Err(ApiStatus::invalid(
                    "CustomResourceDefinition",
                    "apiextensions.k8s.io",
                    &name,
                    &[(
                        "spec.names.plural".into(),
                        format!(
                            "Invalid value: {:?}: conflicts with a built-in resource",
                            info.plural
                        ),
                    )],
                ));
            }
            Some(old) if existing && old.namespaced != info.namespaced => {
                return Err(ApiStatus::invalid(
                    "CustomResourceDefinition",
                    "apiextensions.k8s.io",
                    &name,
                    &[(
                        "spec.scope".into(),
                        "Invalid value: field is immutable".into(),
                    )],
                ));
            }
            _ => {}
        }
        self.resources.insert(key, info);
        Ok(())
    }

    /// Creates an object in namespace `ns` ("" for cluster-scoped kinds).
    pub fn create(
        &mut self,
        res: &ResourceInfo,
        ns: &str,
        obj: Value,
        strict: bool,
    ) -> Result<WriteOutcome, ApiStatus> {
        let version = api_version_of(&obj, res);
        let (mut obj, warnings) = self.decode(res, &version, obj, strict)?;
        let mut name = meta_str(&obj, "name").to_string();
        let generate = meta_str(&obj, "generateName").to_string();
        if name.is_empty() {
            if generate.is_empty() {
                return Err(ApiStatus::invalid(
                    &res.kind,
                    &res.group,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
            name = format!("{generate}{}", self.random_suffix());
        }
        Self::validate_name(res, &name)?;
        let body_ns = meta_str(&obj, "namespace").to_string();
        if res.namespaced {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiStatus::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let ns_key = (String::new(), "namespaces".to_string());
            let exists = self
                .objects
                .get(&ns_key)
                .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())));
            if !exists {
                return Err(ApiStatus::not_found(Subject {
                    group: "",
                    plural: "namespaces",
                    name: ns,
                }));
            }
        }
        let key = Self::obj_key(res, ns, &name);
        let res_key = Self::res_key(res);
        if self
            .objects
            .get(&res_key)
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(ApiStatus::already_exists(Self::subject(res, &name)));
        }
        let uid = self.next_uid();
        {
            let meta = meta_mut(&mut obj);
            meta.insert("name".into(), json!(name));
            if res.namespaced {
                meta.insert("namespace".into(), json!(ns));
            } else {
                meta.remove("namespace");
            }
            meta.insert("uid".into(), json!(uid));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
            if res.generation {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
        }
        obj["apiVersion"] = json!(version);
        obj["kind"] = json!(res.kind);
        if res.reset_status_on_create
            && let Value::Object(m) = &mut obj
        {
            m.remove("status");
        }
        if res.group.is_empty() && res.plural == "services" {
            obj["status"] = json!({"loadBalancer": {}});
        }
        self.apply_defaults(res, &mut obj);
        let errs = validate_builtin(&res.group, &res.plural, &obj);
        if !errs.is_empty() {
            return Err(ApiStatus::invalid(&res.kind, &res.group, &name, &errs));
        }
        if res.plural == "customresourcedefinitions" && res.group == "apiextensions.k8s.io" {
            self.register_crd(&obj, false)?;
            Self::crd_status(&mut obj);
        }
        let stored = self.commit(&res_key, key, ChangeKind::Added, obj, None);
        Ok(WriteOutcome {
            object: (*stored).clone(),
            created: true,
            warnings,
        })
    }

    /// Replaces an object (or its status) with what `build` returns given the
    /// current object. Carries out optimistic concurrency (stale
    /// `metadata.resourceVersion` is a 409 Conflict), subresource rules,
    /// generation bumps, no-op detection and create-on-update.
    pub fn update_with(
        &mut self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        target: WriteTarget,
        strict: bool,
        build: impl FnOnce(Option<&Value>) -> Result<Value, ApiStatus>,
    ) -> Result<WriteOutcome, ApiStatus> {
        let res_key = Self::res_key(res);
        let key = Self::obj_key(res, ns, name);
        let old = self.stored(&res_key, &key);
        let new = build(old.as_deref())?;
        if !new.is_object() {
            return Err(ApiStatus::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let body_name = meta_str(&new, "name");
        if body_name != name {
            return Err(ApiStatus::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = meta_str(&new, "namespace");
        if res.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiStatus::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let Some(old) = old else {
            if res.create_on_update && target == WriteTarget::Main {
                return self.create(res, ns, new, strict);
            }
            return Err(ApiStatus::not_found(Self::subject(res, name)));
        };
        let version = api_version_of(&new, res);
        let (mut new, warnings) = self.decode(res, &version, new, strict)?;
        let subject = Self::subject(res, name);
        let body_rv = meta_str(&new, "resourceVersion");
        if !body_rv.is_empty() && body_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiStatus::stale(subject));
        }
        let body_uid = meta_str(&new, "uid");
        if !body_uid.is_empty() && body_uid != meta_str(&old, "uid") {
            return Err(ApiStatus::conflict(
                subject,
                &format!(
                    "Precondition failed: UID in precondition: {body_uid}, UID in object meta: {}",
                    meta_str(&old, "uid")
                ),
            ));
        }
        let mut result = match target {
            WriteTarget::Status => {
                let mut r = (*old).clone();
                match new.get("status") {
                    Some(s) => r["status"] = s.clone(),
                    None => {
                        if let Value::Object(m) = &mut r {
                            m.remove("status");
                        }
                    }
                }
                r
            }
            WriteTarget::Main => {
                if res.status
                    && let Value::Object(m) = &mut new
                {
                    match old.get("status") {
                        Some(s) => {
                            m.insert("status".into(), s.clone());
                        }
                        None => {
                            m.remove("status");
                        }
                    }
                }
                let preserved = [
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                ];
                let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
                let meta = meta_mut(&mut new);
                for f in preserved {
                    match old_meta.get(f) {
                        Some(v) => meta.insert(f.into(), v.clone()),
                        None => meta.remove(f),
                    };
                }
                if res.namespaced {
                    meta.insert("namespace".into(), json!(ns));
                } else {
                    meta.remove("namespace");
                }
                new["apiVersion"] = json!(version);
                new["kind"] = json!(res.kind);
                if res.generation && spec_part(&new, res.status) != spec_part(&old, res.status) {
                    let g = old
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    meta_mut(&mut new).insert("generation".into(), json!(g + 1));
                }
                new
            }
        };
        meta_mut(&mut result).insert(
            "resourceVersion".into(),
            json!(meta_str(&old, "resourceVersion")),
        );
        let is_crd =
            res.plural == "customresourcedefinitions" && res.group == "apiextensions.k8s.io";
        if is_crd && target == WriteTarget::Main {
            self.register_crd(&result, true)?;
            let status = old.get("status").cloned();
            Self::crd_status(&mut result);
            // Keep the original condition times when nothing changed.
            if let Some(s) = status
                && s.get("acceptedNames") == result.pointer("/status/acceptedNames")
            {
                result["status"] = s;
            }
        }
        let errs = validate_builtin(&res.group, &res.plural, &result);
        if !errs.is_empty() {
            return Err(ApiStatus::invalid(&res.kind, &res.group, name, &errs));
        }
        if result == *old {
            return Ok(WriteOutcome {
                object: result,
                created: false,
                warnings,
            });
        }
        let finalizers_empty = result
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if result.pointer("/metadata/deletionTimestamp").is_some() && finalizers_empty {
            let obj = self.remove_object(res, key, Some(result))?;
            return Ok(WriteOutcome {
                object: obj,
                created: false,
                warnings,
            });
        }
        let stored = self.commit(&res_key, key, ChangeKind::Modified, result, Some(old));
        Ok(WriteOutcome {
            object: (*stored).clone(),
            created: false,
            warnings,
        })
    }

    fn remove_object(
        &mut self,
        res: &ResourceInfo,
        key: ObjKey,
        last: Option<Value>,
    ) -> Result<Value, ApiStatus> {
        let res_key = Self::res_key(res);
        let old = self
            .stored(&res_key, &key)
            .ok_or_else(|| ApiStatus::not_found(Self::subject(res, &key.1)))?;
        let last = last.unwrap_or_else(|| (*old).clone());
        let deleted = self.commit(&res_key, key.clone(), ChangeKind::Deleted, last, Some(old));
        // Cascades: a namespace takes its objects along, a CRD its kind.
        if res.group.is_empty() && res.plural == "namespaces" {
            let victims: Vec<(ResKey, ObjKey)> = self
                .objects
                .iter()
                .flat_map(|(rk, m)| {
                    m.keys()
                        .filter(|(ns, _)| *ns == key.1)
                        .map(move |k| (rk.clone(), k.clone()))
                })
                .collect();
            for (rk, k) in victims {
                if let Some(prev) = self.stored(&rk, &k) {
                    self.commit(&rk, k, ChangeKind::Deleted, (*prev).clone(), Some(prev));
                }
            }
        }
        if res.group == "apiextensions.k8s.io" && res.plural == "customresourcedefinitions" {
            let group = deleted
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or("");
            let plural = deleted
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or("");
            let rk = (group.to_string(), plural.to_string());
            if self.resources.get(&rk).is_some_and(|r| r.custom) {
                let keys: Vec<ObjKey> = self
                    .objects
                    .get(&rk)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                for k in keys {
                    if let Some(prev) = self.stored(&rk, &k) {
                        self.commit(&rk, k, ChangeKind::Deleted, (*prev).clone(), Some(prev));
                    }
                }
                self.resources.remove(&rk);
                self.objects.remove(&rk);
            }
        }
        Ok((*deleted).clone())
    }

    /// Deletes an object, honouring `preconditions` (uid, resourceVersion)
    /// and finalizers (a finalized object only gets a deletionTimestamp).
    pub fn delete(
        &mut self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        pre_uid: Option<&str>,
        pre_rv: Option<&str>,
    ) -> Result<Value, ApiStatus> {
        let res_key = Self::res_key(res);
        let key = Self::obj_key(res, ns, name);
        let old = self
            .stored(&res_key, &key)
            .ok_or_else(|| ApiStatus::not_found(Self::subject(res, name)))?;
        let subject = Self::subject(res, name);
        if let Some(uid) = pre_uid.filter(|u| *u != meta_str(&old, "uid")) {
            return Err(ApiStatus::conflict(
                subject,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid")
                ),
            ));
        }
        if let Some(rv) = pre_rv.filter(|r| *r != meta_str(&old, "resourceVersion")) {
            return Err(ApiStatus::conflict(
                subject,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion")
                ),
            ));
        }
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
            && !(res.group.is_empty() && res.plural == "namespaces");
        if has_finalizers {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((*old).clone());
            }
            let mut marked = (*old).clone();
            let meta = meta_mut(&mut marked);
            meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            let stored = self.commit(&res_key, key, ChangeKind::Modified, marked, Some(old));
            return Ok((*stored).clone());
        }
        self.remove_object(res, key, None)
    }
}

/// The apiVersion an incoming object is written as: its own when it names
/// one of the kind's served versions, else the preferred one.
fn api_version_of(obj: &Value, res: &ResourceInfo) -> String {
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if res.versions.iter().any(|v| res.api_version(v) == av) {
        av.to_string()
    } else {
        res.api_version(res.preferred_version())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_whole_seconds() {
        let now = now_rfc3339();
        assert_eq!(now.len(), "2024-02-29T23:59:59Z".len(), "{now}");
        assert!(now.parse::<jiff::Timestamp>().is_ok());
    }

    #[test]
    fn names() {
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain("A"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(is_dns_label("ns-1", false));
        assert!(!is_dns_label("1svc", true));
    }

    fn lease(name: &str, holder: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": name}, "spec": {"holderIdentity": holder}})
    }

    #[test]
    fn snapshots_undo_history() {
        let mut s = Store::new(100);
        let leases = s.resource("coordination.k8s.io", "leases").unwrap();
        s.create(&leases, "default", lease("a", "n1"), false)
            .unwrap();
        let rv_after_a = s.resource_version();
        s.create(&leases, "default", lease("b", "n1"), false)
            .unwrap();
        s.update_with(&leases, "default", "a", WriteTarget::Main, false, |_| {
            Ok(lease("a", "n2"))
        })
        .unwrap();
        s.delete(&leases, "default", "b", None, None).unwrap();
        let (now, _) = s.list(&leases, Some("default"), None).unwrap();
        assert_eq!(now.len(), 1);
        let (then, rv) = s.list(&leases, Some("default"), Some(rv_after_a)).unwrap();
        assert_eq!(rv, rv_after_a);
        assert_eq!(then.len(), 1);
        assert_eq!(
            then[0].1.pointer("/spec/holderIdentity"),
            Some(&json!("n1"))
        );
        s.compact();
        assert_eq!(
            s.list(&leases, None, Some(rv_after_a)).unwrap_err().code,
            410
        );
    }

    #[test]
    fn noop_update_keeps_resource_version() {
        let mut s = Store::new(100);
        let leases = s.resource("coordination.k8s.io", "leases").unwrap();
        let created = s
            .create(&leases, "default", lease("a", "n1"), false)
            .unwrap()
            .object;
        let rv = s.resource_version();
        let out = s
            .update_with(&leases, "default", "a", WriteTarget::Main, false, |_| {
                Ok(created.clone())
            })
            .unwrap();
        assert_eq!(s.resource_version(), rv);
        assert_eq!(out.object, created);
    }
}
