//! An in-memory Kubernetes API server for tests and the lab.
//!
//! It speaks the Kubernetes REST protocol over plain HTTP/1.1 well enough
//! for kube-rs and a real `kubectl`: discovery (legacy and aggregated
//! `apidiscovery.k8s.io/v2` / `v2beta1`), get / list (label and field
//! selectors, limit/continue with consistent snapshots, resourceVersion +
//! resourceVersionMatch) / watch (from a resourceVersion, "" and "0",
//! bookmarks, sendInitialEvents, timeoutSeconds, `ERROR` 410 Expired when
//! the version is older than the retained history) / create / update with
//! optimistic concurrency / patch (merge, JSON, strategic treated as merge,
//! apply as a documented subset) / delete (preconditions, finalizers) /
//! deletecollection, `/status` subresources, `metadata.generation`, CRDs that
//! start serving their kind, Table output for `kubectl get`, and Kubernetes
//! `Status` errors with kube-apiserver's codes, reasons and wording.
//!
//! Faults and observation: latency, failing a fraction of requests with a
//! code, 429 with Retry-After, watch events delivered late, pausing all or
//! one client (by User-Agent or source address; until lifted or for a
//! while), dropping all watches, restarting with state kept, a request log,
//! per verb/resource/client counters and a write log with CLOCK_MONOTONIC
//! commit times — from Rust ([`TestApiServer`]) and over HTTP under
//! `/__control/`:
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | GET | `/__control/health` | `{"ok":true}` |
//! | GET, DELETE | `/__control/requests` | request log ([`RequestRecord`]s) / reset log and counters |
//! | GET | `/__control/counters` | `[{verb, resource, userAgent, code, count}]` |
//! | GET, DELETE | `/__control/writes` | write log ([`WriteRecord`]s) / clear it |
//! | GET, POST, DELETE | `/__control/faults` | list / add a [`FaultRule`] (answer `{"id":N}`) / clear |
//! | DELETE | `/__control/faults/N` | remove one rule |
//! | POST | `/__control/pause` | `{"client": <ClientMatch>, "forMillis": N}` (`"all"`, `{"userAgent":"x"}`, `{"sourceIp":"127.0.0.1"}`, `{"sourceAddr":"ip:port"}`; without `forMillis` until unpaused) |
//! | POST | `/__control/unpause` | `{"client": <ClientMatch>}`; no body lifts every pause |
//! | POST | `/__control/drop-watches` | `{"dropped":N}` |
//! | POST | `/__control/compact` | forget history (older versions get 410) |
//! | POST | `/__control/restart` | `{"downtimeMillis":N}`: close all connections, rebind |
//!
//! A pause is a partition, not an error: held requests get no answer until
//! it ends, then are handled and answered (taking effect then); a request
//! whose client closed its connection meanwhile is dropped and has no
//! effect. Paused clients' watches deliver nothing meanwhile and catch up
//! in order afterwards. A restart is a dying and restarted kube-apiserver on
//! the same etcd: the listener, every connection and every watch close, the
//! address refuses connections for the downtime, then the same objects are
//! served and resourceVersions go on increasing, so clients resume their
//! watches from their last resourceVersion (or relist).
//!
//! OpenAPI: `/openapi/v3` serves an index and, per group-version, a minimal
//! document listing each resource's operations with
//! `x-kubernetes-group-version-kind` and the `fieldValidation` parameter (no
//! component schemas). kubectl 1.33 reads it, concludes the server validates
//! fields, skips client-side validation and sends `fieldValidation=Strict`;
//! this server then rejects unknown fields (400 "strict decoding error")
//! and checks types (built-in kinds through their k8s-openapi types, custom
//! resources against the CRD schema: 422 Invalid). kubectl 1.27 fetches
//! `/openapi/v2` (protobuf) instead: it gets a valid document without
//! definitions, finds no schema, skips client-side validation and also
//! sends `fieldValidation=Strict`. So plain `kubectl apply` works with
//! both; `--validate=false` works too. `kubectl explain` does not.
//! Without `fieldValidation`, unknown fields are dropped with a `Warning`
//! header, as kube-apiserver does.
//!
//! Not modelled: authentication/authorization (everything is allowed),
//! protobuf request bodies (415; `kubectl create service ...` sends
//! protobuf, `kubectl apply` does not), CBOR, managedFields and real
//! server-side apply (an apply patch creates the object or merges into it
//! like a merge patch, without field ownership or conflicts), dryRun (rejected with 400), graceful pod
//! deletion, namespace Terminating phase (deleting a namespace deletes its
//! objects at once), version conversion for CRDs with several versions
//! (objects are relabelled, not converted), CEL validation. core/v1 and
//! events.k8s.io/v1 Events are two stores: writes of events.k8s.io/v1
//! Events are mirrored, converted, into core/v1 (so `kubectl describe`
//! shows them), not the other way round.

mod discovery;
mod events;
mod faults;
mod http;
mod patch;
mod resources;
mod schema;
mod selector;
mod status;
mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use faults::{ClientId, ClientMatch, CounterKey, FaultAction, FaultRule, RequestRecord};
pub use http::{CONTROL_PREFIX, ServerConfig};
pub use status::ApiStatus;
pub use store::WriteRecord;

use http::Shared;
use store::Store;

/// Errors of starting and driving the server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("writing kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: std::io::Error,
    },
    #[error("building kube client: {0}")]
    Client(String),
    #[error("restart: {0}")]
    Restart(String),
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `std::time::Instant` and of
/// [`WriteRecord::committed_mono_ns`].
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// How many changes the server remembers for watches and paged lists
/// before older resourceVersions become 410 Expired.
pub const DEFAULT_HISTORY_LIMIT: usize = 10_000;

/// A running test API server. Dropping it shuts it down.
pub struct TestApiServer {
    shared: Arc<Shared>,
}

impl TestApiServer {
    /// Starts serving on `addr` (port 0 picks a free port).
    pub async fn start(addr: SocketAddr) -> Result<TestApiServer, ApiServerError> {
        Self::start_with(addr, ServerConfig::default()).await
    }

    /// Starts with explicit tunables.
    pub async fn start_with(
        addr: SocketAddr,
        config: ServerConfig,
    ) -> Result<TestApiServer, ApiServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ApiServerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ApiServerError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(DEFAULT_HISTORY_LIMIT)),
            faults: faults::Faults::new(),
            config: Mutex::new(config),
            epoch: watch::Sender::new(0),
            addr,
        });
        tokio::spawn(http::accept_loop(listener, shared.clone()));
        tracing::info!(addr = %addr, "test API server listening");
        Ok(TestApiServer { shared })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig (YAML) pointing at this server, context `test-apiserver`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test-apiserver\n  cluster:\n    server: {url}\ncontexts:\n- name: test-apiserver\n  context:\n    cluster: test-apiserver\n    user: test-user\n    namespace: default\ncurrent-context: test-apiserver\nusers:\n- name: test-user\n  user:\n    token: test-token\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), ApiServerError> {
        std::fs::write(path, self.kubeconfig_yaml()).map_err(|source| ApiServerError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })
    }

    /// A kube-rs client for this server (default namespace `default`).
    pub fn client(&self) -> Result<kube::Client, ApiServerError> {
        self.client_with_user_agent("test-apiserver-client")
    }

    /// A kube-rs client that identifies itself with `user_agent`, so
    /// faults and counters can single it out.
    pub fn client_with_user_agent(&self, user_agent: &str) -> Result<kube::Client, ApiServerError> {
        let url: hyper::Uri = self
            .url()
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| ApiServerError::Client(e.to_string()))?;
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".into();
        config.read_timeout = None;
        let mut headers = Vec::new();
        if let Ok(v) = hyper::header::HeaderValue::from_str(user_agent) {
            headers.push((hyper::header::USER_AGENT, v));
        }
        config.headers = headers;
        kube::Client::try_from(config).map_err(|e| ApiServerError::Client(e.to_string()))
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Adds a fault rule; returns its id for [`Self::remove_fault`].
    pub fn add_fault(&self, rule: FaultRule) -> u64 {
        self.shared.faults.add_rule(rule)
    }

    pub fn remove_fault(&self, id: u64) -> bool {
        self.shared.faults.remove_rule(id)
    }

    pub fn clear_faults(&self) {
        self.shared.faults.clear_rules()
    }

    /// Adds `latency` to every request of matching clients.
    pub fn add_latency(&self, client: ClientMatch, latency: Duration) -> u64 {
        self.add_fault(FaultRule {
            client,
            verb: None,
            resource: None,
            action: FaultAction::Latency {
                millis: latency.as_millis() as u64,
            },
        })
    }

    /// Fails `fraction` (0..=1, deterministic) of all requests with `code`.
    pub fn fail_requests(&self, code: u16, fraction: f64) -> u64 {
        self.add_fault(FaultRule::all(FaultAction::Fail { code, fraction }))
    }

    /// Answers `fraction` of all requests with 429 and `Retry-After`.
    pub fn throttle(&self, fraction: f64, retry_after_seconds: u64) -> u64 {
        self.add_fault(FaultRule::all(FaultAction::TooManyRequests {
            fraction,
            retry_after_seconds,
        }))
    }

    /// Pauses matching clients until [`Self::unpause`]: their requests get
    /// no answer and their watches deliver nothing, as in a network
    /// partition; other clients are served as usual. When the pause ends,
    /// held requests are handled and answered, and held watch events follow
    /// in order; requests whose client gave up (closed the connection) are
    /// dropped without effect. `pause(ClientMatch::All)` pauses everyone
    /// (the `/__control/` endpoints keep answering).
    pub fn pause(&self, client: ClientMatch) {
        self.shared.faults.pause(client, None)
    }

    /// Like [`Self::pause`], lifting itself after `duration` (or earlier by
    /// [`Self::unpause`]).
    pub fn pause_for(&self, client: ClientMatch, duration: Duration) {
        self.shared.faults.pause(client, Some(duration))
    }

    /// Pauses the clients whose User-Agent contains `user_agent` (agents
    /// send `l2announcer/<version> (<node>)`, so `"(node-1)"` singles one
    /// out), until [`Self::resume_client`] or for `duration`.
    pub fn pause_client(&self, user_agent: &str, duration: Option<Duration>) {
        self.shared
            .faults
            .pause(ClientMatch::UserAgent(user_agent.to_string()), duration)
    }

    /// Lifts [`Self::pause_client`]`(user_agent, ..)`.
    pub fn resume_client(&self, user_agent: &str) {
        self.unpause(&ClientMatch::UserAgent(user_agent.to_string()))
    }

    /// Lifts pauses made for exactly `client`.
    pub fn unpause(&self, client: &ClientMatch) {
        self.shared.faults.unpause(client)
    }

    /// Lifts every pause.
    pub fn unpause_all(&self) {
        self.shared.faults.unpause_all()
    }

    /// Delivers the watch events (and bookmarks) of matching clients
    /// `delay` after their commit; their requests are answered as usual.
    /// Returns the rule id for [`Self::remove_fault`].
    pub fn delay_watches(&self, client: ClientMatch, delay: Duration) -> u64 {
        self.add_fault(FaultRule {
            client,
            verb: None,
            resource: None,
            action: FaultAction::WatchDelay {
                millis: delay.as_millis() as u64,
            },
        })
    }

    /// Requests (and watch event deliveries) held by a pause right now.
    pub fn held_requests(&self) -> usize {
        self.shared.faults.held()
    }

    /// Ends every open watch; returns how many there were.
    pub fn drop_watches(&self) -> usize {
        self.shared.store().drop_watches()
    }

    /// Open watches right now.
    pub fn watch_count(&self) -> usize {
        self.shared.store().watcher_count()
    }

    /// Forgets the change history: watches or continue tokens from older
    /// resourceVersions get 410 Expired.
    pub fn compact(&self) {
        self.shared.store().compact()
    }

    /// Keeps only the last `limit` changes.
    pub fn set_history_limit(&self, limit: usize) {
        self.shared.store().set_history_limit(limit)
    }

    /// Changes how often watches with bookmarks get one.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bookmark_interval = interval;
    }

    /// Stops serving as a dying process would (the listener, every
    /// connection and every watch close; connecting is refused), waits
    /// `downtime`, and serves again on the same address with all objects
    /// and the change history kept: resourceVersions go on increasing and
    /// watches resume from where they were. Returns once serving again.
    pub async fn restart(&self, downtime: Duration) -> Result<(), ApiServerError> {
        http::restart(self.shared.clone(), Duration::ZERO, downtime)
            .await
            .map_err(|e| ApiServerError::Restart(e.to_string()))?
            .map_err(|e| ApiServerError::Restart(e.to_string()))
    }

    /// Every request served so far (oldest first).
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.faults.log()
    }

    /// Request counts per (verb, resource, user agent, code).
    pub fn request_counts(&self) -> Vec<(CounterKey, u64)> {
        self.shared.faults.counters()
    }

    /// Clears the request log and counters.
    pub fn reset_request_log(&self) {
        self.shared.faults.reset_observations()
    }

    /// Every committed write so far (oldest first), each with its
    /// resourceVersion, CLOCK_MONOTONIC commit time, the writing client's
    /// User-Agent and the object after the write.
    pub fn write_history(&self) -> Vec<WriteRecord> {
        self.shared.store().write_log()
    }

    /// Clears the write history.
    pub fn clear_write_history(&self) {
        self.shared.store().clear_write_log()
    }

    /// Stops listening and closes every connection.
    pub fn shutdown(&self) {
        self.shared.epoch.send_modify(|e| *e += 1);
        self.shared.store().drop_watches();
    }
}

/// A plain HTTP/1.1 response, as read by [`raw_request`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends one HTTP/1.1 request on a fresh connection (`Connection: close`)
/// and reads the whole response. For tests that need bytes on the wire
/// exactly as given (malformed bodies, odd headers) and for calling the
/// `/__control/` endpoints without a Kubernetes client.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_str = String::from_utf8_lossy(&rest[..pos]).into_owned();
            let size = usize::from_str_radix(size_str.trim(), 16).map_err(|_| bad("bad chunk"))?;
            rest = &rest[pos + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        body = out;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// The kubectl binaries to test with: `(version label, path)` for
/// /usr/lib/google-cloud-sdk/bin/kubectl.1.33 and kubectl.1.27 when present;
/// when neither is, the `kubectl` on PATH (label "path"). Empty when there
/// is no kubectl at all.
pub fn kubectl_binaries() -> Vec<(String, std::path::PathBuf)> {
    let mut found = Vec::new();
    for v in ["1.33", "1.27"] {
        let p = std::path::PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.{v}"));
        if p.is_file() {
            found.push((v.to_string(), p));
        }
    }
    if found.is_empty() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
        {
            found.push(("path".to_string(), p));
        }
    }
    found
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
