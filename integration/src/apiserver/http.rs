//! The HTTP side: accepting connections, fault injection, routing of
//! Kubernetes REST paths to the store, watch streams and the `/__control/`
//! endpoints.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::discovery::{self, OutputForm};
use super::events;
use super::faults::{ClientId, ClientMatch, FaultRule, Faults, RequestRecord, Verdict, now_ms};
use super::patch::{json_patch, merge_patch, strip_strategic_directives};
use super::resources::ResourceInfo;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiStatus, success_status};
use super::store::{Change, ChangeKind, Store, WriteTarget};

const OPENAPI_V2_PB_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// gnostic `openapi_v2.Document{swagger: "2.0", info: {title: "Kubernetes",
/// version: "v1.33.0"}}` in protobuf wire format.
const OPENAPI_V2_PB: &[u8] = b"\x0a\x032.0\x12\x15\x0a\x0aKubernetes\x12\x07v1.33.0";

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Prefix of the control endpoints; never subject to faults or logging.
pub const CONTROL_PREFIX: &str = "/__control/";

/// Tunables of a running server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted request body (kube-apiserver: 3 MiB).
    pub max_body_bytes: usize,
    /// How often watches with allowWatchBookmarks get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Watch length when the client gives no timeoutSeconds.
    pub default_watch_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 3 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

/// State shared by every connection.
pub struct Shared {
    pub store: Mutex<Store>,
    pub faults: Faults,
    pub config: Mutex<ServerConfig>,
    /// Bumped to close the listener and every connection (restart, shutdown).
    pub epoch: watch::Sender<u64>,
    pub addr: SocketAddr,
}

impl Shared {
    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // The store is only mutated through methods that leave it
        // consistent before any point that could panic; keep serving.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> ServerConfig {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Accepts connections until the epoch changes.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut epoch = shared.epoch.subscribe();
    epoch.mark_unchanged();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let shared = shared.clone();
                let mut conn_epoch = shared.epoch.subscribe();
                conn_epoch.mark_unchanged();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, peer, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(io, svc);
                    tokio::select! {
                        r = conn => {
                            if let Err(e) = r {
                                tracing::debug!(peer = %peer, error = %e, "connection ended with error");
                            }
                        }
                        _ = conn_epoch.changed() => {}
                    }
                });
            }
            _ = epoch.changed() => break,
        }
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn status_response(s: &ApiStatus) -> Response<Body> {
    let mut r = json_response(s.code, &s.to_json());
    if let Some(secs) = s.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        r.headers_mut().insert("Retry-After", v);
    }
    r
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

/// A parsed resource path.
#[derive(Debug, Clone, Default)]
struct ResourcePath {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    legacy_watch: bool,
}

enum Route {
    Version,
    Api,
    ApiV1Resources,
    Apis,
    ApiGroup(String),
    GroupVersion(String, String),
    /// Path after `/openapi/`.
    OpenApi(String),
    Resource(ResourcePath),
    Unknown,
}

fn route(path: &str) -> Route {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match s.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::Api,
        ["api", "v1"] => return Route::ApiV1Resources,
        ["apis"] => return Route::Apis,
        ["apis", g] => return Route::ApiGroup(g.to_string()),
        ["apis", g, v] => return Route::GroupVersion(g.to_string(), v.to_string()),
        ["openapi", rest @ ..] => return Route::OpenApi(rest.join("/")),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Unknown,
    };
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        r => (false, r),
    };
    let mut p = ResourcePath {
        group: group.into(),
        version: version.into(),
        legacy_watch,
        ..Default::default()
    };
    let rest = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            p.namespace = Some(ns.to_string());
            p.plural = plural.to_string();
            tail
        }
        [plural, tail @ ..] => {
            p.plural = plural.to_string();
            tail
        }
        [] => return Route::Unknown,
    };
    match rest {
        [] => {}
        [name] => p.name = Some(name.to_string()),
        [name, sub] => {
            p.name = Some(name.to_string());
            p.sub = Some(sub.to_string());
        }
        _ => return Route::Unknown,
    }
    Route::Resource(p)
}

struct Ctx {
    shared: Arc<Shared>,
    client: ClientId,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
}

impl Ctx {
    /// The store, with writes attributed to this request's client.
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        let mut store = self.shared.store();
        store.set_writer(&self.client.user_agent);
        store
    }
}

/// The outcome of a request before it is turned into a response.
enum Reply {
    Json(u16, Value, Vec<String>),
    Raw(u16, &'static str, Value),
    Status(ApiStatus),
    Bytes(u16, &'static str, Bytes),
    Stream(mpsc::Receiver<Bytes>),
}

impl From<ApiStatus> for Reply {
    fn from(s: ApiStatus) -> Self {
        Reply::Status(s)
    }
}

async fn handle(shared: Arc<Shared>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix(CONTROL_PREFIX) {
        let rest = rest.to_string();
        return control(shared, req, &rest).await;
    }
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let client = ClientId {
        user_agent: header("user-agent"),
        addr: peer,
    };
    let ctx = Ctx {
        shared: shared.clone(),
        client: client.clone(),
        query: parse_query(req.uri().query()),
        accept: header("accept"),
        content_type: header("content-type"),
    };
    let method = req.method().clone();
    let route = route(&path);
    let (verb, rp) = classify(&method, &route, &ctx.query);
    let mut record = RequestRecord {
        time_ms: now_ms(),
        user_agent: client.user_agent.clone(),
        source: peer.to_string(),
        method: method.to_string(),
        verb: verb.to_string(),
        group: rp.as_ref().map(|p| p.group.clone()).unwrap_or_default(),
        resource: rp.as_ref().map(|p| p.plural.clone()).unwrap_or_default(),
        subresource: rp.as_ref().and_then(|p| p.sub.clone()).unwrap_or_default(),
        namespace: rp
            .as_ref()
            .and_then(|p| p.namespace.clone())
            .unwrap_or_default(),
        name: rp.as_ref().and_then(|p| p.name.clone()).unwrap_or_default(),
        path: path.clone(),
        query: req.uri().query().unwrap_or("").to_string(),
        code: 0,
        latency_us: 0,
    };

    // The whole request is read before a pause holds it: while a body is
    // still unread hyper does not notice the client closing the connection,
    // and a request its client gave up on must be dropped, not take effect
    // when the pause ends.
    let limit = shared.config().max_body_bytes;
    let body = Limited::new(req.into_body(), limit).collect().await;
    shared.faults.wait_unpaused(&client).await;
    let (delay, verdict) = shared.faults.consult(&client, verb, &record.resource);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = match verdict {
        Verdict::Fail(code) => Reply::Status(ApiStatus::injected(code)),
        Verdict::TooMany(secs) => Reply::Status(ApiStatus::too_many_requests(secs)),
        Verdict::Proceed => match body {
            Ok(b) => dispatch(&ctx, &method, route, verb, b.to_bytes()).await,
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Reply::Status(ApiStatus::too_large(limit))
            }
            Err(e) => Reply::Status(ApiStatus::bad_request(format!("reading body: {e}"))),
        },
    };
    let response = match reply {
        Reply::Json(code, v, warnings) => {
            let mut r = json_response(code, &v);
            for w in warnings {
                if let Ok(h) = HeaderValue::from_str(&format!("299 - {:?}", w)) {
                    r.headers_mut().append("Warning", h);
                }
            }
            r
        }
        Reply::Raw(code, ct, v) => {
            let mut r = json_response(code, &v);
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        }
        Reply::Status(s) => status_response(&s),
        Reply::Bytes(code, ct, b) => {
            let mut r = Response::new(full(b));
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        }
        Reply::Stream(rx) => {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r.headers_mut()
                .insert("Transfer-Encoding", HeaderValue::from_static("chunked"));
            r
        }
    };
    record.code = response.status().as_u16();
    record.latency_us = started.elapsed().as_micros() as u64;
    tracing::debug!(verb = %record.verb, path = %record.path, code = record.code, client = %record.user_agent, "request");
    shared.faults.record(record);
    response
}

fn classify(
    method: &Method,
    route: &Route,
    q: &HashMap<String, String>,
) -> (&'static str, Option<ResourcePath>) {
    match route {
        Route::Version => ("version", None),
        Route::Api
        | Route::ApiV1Resources
        | Route::Apis
        | Route::ApiGroup(_)
        | Route::GroupVersion(..) => ("discovery", None),
        Route::OpenApi(_) => ("openapi", None),
        Route::Unknown => ("unknown", None),
        Route::Resource(p) => {
            let watch = p.legacy_watch || truthy(q, "watch");
            let verb = match (method, p.name.is_some()) {
                (&Method::GET, _) if watch => "watch",
                (&Method::GET, true) => "get",
                (&Method::GET, false) => "list",
                (&Method::POST, false) => "create",
                (&Method::PUT, true) => "update",
                (&Method::PATCH, true) => "patch",
                (&Method::DELETE, true) => "delete",
                (&Method::DELETE, false) => "deletecollection",
                _ => "unknown",
            };
            (verb, Some(p.clone()))
        }
    }
}

async fn dispatch(ctx: &Ctx, method: &Method, route: Route, verb: &str, body: Bytes) -> Reply {
    let resources = ctx.store().resources();
    if !matches!(route, Route::Resource(_)) && method != Method::GET {
        return ApiStatus::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))
        .into();
    }
    match route {
        Route::Version => Reply::Json(200, discovery::version_info(), vec![]),
        Route::Api => {
            if let Some(v) = aggregated_version(&ctx.accept) {
                return Reply::Raw(
                    200,
                    aggregated_content_type(v),
                    discovery::aggregated(&resources, true, v),
                );
            }
            Reply::Json(
                200,
                discovery::api_versions(&ctx.shared.addr.to_string()),
                vec![],
            )
        }
        Route::Apis => {
            if let Some(v) = aggregated_version(&ctx.accept) {
                return Reply::Raw(
                    200,
                    aggregated_content_type(v),
                    discovery::aggregated(&resources, false, v),
                );
            }
            Reply::Json(200, discovery::api_group_list(&resources), vec![])
        }
        Route::ApiV1Resources => match discovery::api_resource_list(&resources, "", "v1") {
            Some(v) => Reply::Json(200, v, vec![]),
            None => ApiStatus::no_route().into(),
        },
        Route::ApiGroup(g) => {
            let rs = discovery::group_resources(&resources, &g);
            if rs.is_empty() {
                return ApiStatus::no_route().into();
            }
            Reply::Json(200, discovery::api_group(&g, &rs), vec![])
        }
        Route::GroupVersion(g, v) => match discovery::api_resource_list(&resources, &g, &v) {
            Some(v) => Reply::Json(200, v, vec![]),
            None => ApiStatus::no_route().into(),
        },
        Route::OpenApi(rest) => {
            if rest == "v2" {
                // An OpenAPI v2 document without definitions: kubectl (1.27
                // needs v2 for `apply`) then finds no schema for any kind and
                // skips client-side validation, as it does for unknown kinds.
                if ctx.accept.contains("protobuf") {
                    return Reply::Bytes(
                        200,
                        OPENAPI_V2_PB_TYPE,
                        Bytes::from_static(OPENAPI_V2_PB),
                    );
                }
                return Reply::Json(
                    200,
                    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": {}}),
                    vec![],
                );
            }
            if rest == "v3" {
                return Reply::Json(200, discovery::openapi_v3_index(&resources), vec![]);
            }
            match rest
                .strip_prefix("v3/")
                .and_then(|gv| discovery::openapi_v3_doc(&resources, gv))
            {
                Some(doc) => Reply::Json(200, doc, vec![]),
                // No OpenAPI v2: kubectl then relies on server-side field
                // validation, which it learns about from v3.
                None => ApiStatus::no_route().into(),
            }
        }
        Route::Unknown => ApiStatus::no_route().into(),
        Route::Resource(p) => match resource_request(ctx, p, verb, body).await {
            Ok(r) => r,
            Err(s) => Reply::Status(s),
        },
    }
}

fn aggregated_version(accept: &str) -> Option<&'static str> {
    for entry in accept.split(',') {
        if !entry.contains("as=APIGroupDiscoveryList") || !entry.contains("g=apidiscovery.k8s.io") {
            continue;
        }
        let v = entry
            .split(';')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("v="));
        match v {
            Some("v2") => return Some("v2"),
            Some("v2beta1") => return Some("v2beta1"),
            _ => {}
        }
    }
    None
}

fn aggregated_content_type(v: &str) -> &'static str {
    if v == "v2" {
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    } else {
        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
    }
}

/// Renders stored objects in the requested version and form.
#[derive(Clone)]
struct Render {
    res: ResourceInfo,
    version: String,
    form: OutputForm,
}

impl Render {
    fn versioned(&self, obj: &Value) -> Value {
        let mut o = obj.clone();
        o["apiVersion"] = json!(self.res.api_version(&self.version));
        o
    }

    fn one(&self, obj: &Value) -> Value {
        let o = self.versioned(obj);
        match self.form {
            OutputForm::Full => o,
            OutputForm::Metadata => discovery::partial_metadata(&o),
            OutputForm::Table {
                include_full,
                v1beta1,
            } => {
                let rv = o
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(json!(""));
                discovery::table(
                    &self.res,
                    &[o],
                    include_full,
                    v1beta1,
                    json!({"resourceVersion": rv}),
                )
            }
        }
    }

    fn list(&self, objs: Vec<Value>, meta: Value) -> Value {
        let objs: Vec<Value> = objs.iter().map(|o| self.versioned(o)).collect();
        match self.form {
            OutputForm::Full => json!({
                "kind": format!("{}List", self.res.kind),
                "apiVersion": self.res.api_version(&self.version),
                "metadata": meta,
                "items": objs,
            }),
            OutputForm::Metadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": objs.iter().map(discovery::partial_metadata).collect::<Vec<_>>(),
            }),
            OutputForm::Table {
                include_full,
                v1beta1,
            } => discovery::table(&self.res, &objs, include_full, v1beta1, meta),
        }
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    hex(&format!("{rv}\n{ns}\n{name}"))
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    let s = unhex(token)?;
    let mut parts = s.splitn(3, '\n');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.to_string(),
        parts.next()?.to_string(),
    ))
}

fn parse_rv(s: &str) -> Result<u64, ApiStatus> {
    s.parse::<u64>()
        .map_err(|_| ApiStatus::bad_request(format!("invalid resource version: {s:?}")))
}

fn parse_body(ctx: &Ctx, body: &Bytes) -> Result<Value, ApiStatus> {
    if body.is_empty() {
        return Err(ApiStatus::bad_request("the request body is empty"));
    }
    let ct = ctx.content_type.split(';').next().unwrap_or("").trim();
    if !matches!(ct, "" | "application/json" | "application/yaml" | "*/*") {
        return Err(ApiStatus::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct:?})"
            ),
        ));
    }
    let v: Value = if ct.ends_with("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiStatus::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiStatus::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    Ok(v)
}

/// Checks that a body is an object of the resource's kind in a served
/// version, as kube-apiserver's decoder does.
fn check_kind(res: &ResourceInfo, version: &str, obj: &Value) -> Result<(), ApiStatus> {
    if !obj.is_object() {
        return Err(ApiStatus::bad_request(format!(
            "couldn't get version/kind; json parse error: expected an object, got {}",
            obj
        )));
    }
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if kind.is_empty() {
        return Err(ApiStatus::bad_request(format!(
            "Object 'Kind' is missing in '{obj}'"
        )));
    }
    let expected = res.api_version(version);
    if !av.is_empty() && av != expected {
        return Err(ApiStatus::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({expected})"
        )));
    }
    if kind != res.kind {
        return Err(ApiStatus::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {}: no kind \"{kind}\" is registered for version \"{expected}\"",
            res.kind
        )));
    }
    Ok(())
}

async fn resource_request(
    ctx: &Ctx,
    p: ResourcePath,
    verb: &str,
    body: Bytes,
) -> Result<Reply, ApiStatus> {
    let ns = p.namespace.clone().unwrap_or_default();
    let url_name = p.name.clone().unwrap_or_default();
    let events_v1 = ctx
        .store()
        .resource(&p.group, &p.plural)
        .is_some_and(|r| events::is_events_v1(&r));
    let reply = resource_request_inner(ctx, p, verb, body).await?;
    if events_v1 && matches!(verb, "create" | "update" | "patch" | "delete") {
        // The name: from the URL, or the created object's (generateName).
        let name = match &reply {
            Reply::Json(_, obj, _) if url_name.is_empty() => obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => url_name,
        };
        let mut store = ctx.store();
        if let Some(res) = store.resource("events.k8s.io", "events") {
            let now = match store.get(&res, &ns, &name) {
                Ok(obj) => Some(obj),
                Err(e) if e.code == 404 => None,
                Err(e) => return Err(e),
            };
            events::mirror(&mut store, &ns, &name, now.as_deref())?;
        }
    }
    Ok(reply)
}

async fn resource_request_inner(
    ctx: &Ctx,
    p: ResourcePath,
    verb: &str,
    body: Bytes,
) -> Result<Reply, ApiStatus> {
    let res = ctx
        .store()
        .resource(&p.group, &p.plural)
        .filter(|r| r.versions.contains(&p.version))
        .ok_or_else(ApiStatus::no_route)?;
    if (res.namespaced && p.namespace.is_none() && !matches!(verb, "list" | "watch"))
        || (!res.namespaced && p.namespace.is_some())
    {
        return Err(ApiStatus::no_route());
    }
    let target = match p.sub.as_deref() {
        None => WriteTarget::Main,
        Some("status") if res.status => WriteTarget::Status,
        Some(_) => return Err(ApiStatus::no_route()),
    };
    let form = discovery::output_form(
        &ctx.accept,
        ctx.query
            .get("includeObject")
            .map(String::as_str)
            .unwrap_or(""),
    )
    .map_err(|()| {
        ApiStatus::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json, application/yaml",
        )
    })?;
    let render = Render {
        res: res.clone(),
        version: p.version.clone(),
        form,
    };
    let ns = p.namespace.clone().unwrap_or_default();
    let name = p.name.clone().unwrap_or_default();
    let strict = ctx.query.get("fieldValidation").map(String::as_str) == Some("Strict");
    if ctx.query.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiStatus::bad_request(
            "dryRun is not supported by the test API server",
        ));
    }
    match verb {
        "get" => {
            let obj = ctx.store().get(&res, &ns, &name)?;
            Ok(Reply::Json(200, render.one(&obj), vec![]))
        }
        "list" => list(ctx, &res, p.namespace.as_deref(), &render),
        "watch" => watch(ctx, &res, &p, render),
        "create" => {
            let obj = parse_body(ctx, &body)?;
            check_kind(&res, &p.version, &obj)?;
            let out = ctx.store().create(&res, &ns, obj, strict)?;
            Ok(Reply::Json(201, render.one(&out.object), out.warnings))
        }
        "update" => {
            let obj = parse_body(ctx, &body)?;
            check_kind(&res, &p.version, &obj)?;
            let out = ctx
                .store()
                .update_with(&res, &ns, &name, target, strict, |_| Ok(obj))?;
            Ok(Reply::Json(
                if out.created { 201 } else { 200 },
                render.one(&out.object),
                out.warnings,
            ))
        }
        "patch" => patch(ctx, &res, &p, &ns, &name, target, strict, body, &render),
        "delete" => {
            let opts = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice::<Value>(&body).map_err(|e| {
                    ApiStatus::bad_request(format!(
                        "couldn't get version/kind; json parse error: {e}"
                    ))
                })?
            };
            let policy = opts
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .or(ctx.query.get("propagationPolicy").map(String::as_str));
            if let Some(pp) = policy
                && !matches!(pp, "Orphan" | "Background" | "Foreground")
            {
                return Err(ApiStatus::invalid(
                    "DeleteOptions",
                    "meta.k8s.io",
                    "",
                    &[(
                        "propagationPolicy".into(),
                        format!(
                            "Unsupported value: {pp:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                        ),
                    )],
                ));
            }
            let uid = opts.pointer("/preconditions/uid").and_then(Value::as_str);
            let rv = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str);
            let deleted = ctx.store().delete(&res, &ns, &name, uid, rv)?;
            let returns_object = res.custom
                || (res.group.is_empty() && matches!(res.plural.as_str(), "pods" | "namespaces"))
                || deleted.pointer("/metadata/deletionTimestamp").is_some();
            if returns_object {
                Ok(Reply::Json(200, render.one(&deleted), vec![]))
            } else {
                let uid = deleted
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                Ok(Reply::Json(
                    200,
                    success_status(&res.group, &res.plural, &name, uid),
                    vec![],
                ))
            }
        }
        "deletecollection" => {
            let labels = LabelSelector::parse(
                ctx.query
                    .get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or(""),
            )
            .map_err(ApiStatus::bad_request)?;
            let fields = FieldSelector::parse(
                ctx.query
                    .get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or(""),
                &res.field_selector_paths(),
            )
            .map_err(ApiStatus::bad_request)?;
            let mut store = ctx.store();
            let (items, _) = store.list(&res, p.namespace.as_deref(), None)?;
            let mut deleted = Vec::new();
            for ((ins, iname), obj) in items {
                if labels.matches(&obj) && fields.matches(&obj) {
                    deleted.push(store.delete(&res, &ins, &iname, None, None)?);
                }
            }
            let rv = store.resource_version();
            drop(store);
            Ok(Reply::Json(
                200,
                render.list(deleted, json!({"resourceVersion": rv.to_string()})),
                vec![],
            ))
        }
        _ => Err(ApiStatus::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn list(
    ctx: &Ctx,
    res: &ResourceInfo,
    ns: Option<&str>,
    render: &Render,
) -> Result<Reply, ApiStatus> {
    let q = &ctx.query;
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiStatus::bad_request)?;
    let fields = FieldSelector::parse(
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
        &res.field_selector_paths(),
    )
    .map_err(ApiStatus::bad_request)?;
    let limit: usize = match q.get("limit").map(String::as_str) {
        None | Some("") => 0,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiStatus::bad_request(format!("invalid limit: {l:?}")))?
            .max(0) as usize,
    };
    let token = q.get("continue").filter(|c| !c.is_empty());
    let rv_param = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let rv_match = q
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or("");
    let (at, after) = match token {
        Some(t) => {
            if !rv_param.is_empty() {
                return Err(ApiStatus::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, cns, cname) = decode_continue(t).ok_or_else(|| {
                ApiStatus::bad_request("continue key is not valid: malformed token")
            })?;
            (Some(rv), Some((cns, cname)))
        }
        None => match rv_match {
            "Exact" => (Some(parse_rv(rv_param)?), None),
            "" | "NotOlderThan" => {
                if !rv_param.is_empty() {
                    parse_rv(rv_param)?;
                }
                (None, None)
            }
            other => {
                return Err(ApiStatus::bad_request(format!(
                    "unsupported resourceVersionMatch: {other:?}"
                )));
            }
        },
    };
    let (items, list_rv) = ctx.store().list(res, ns, at).map_err(|e| {
        if token.is_some() && e.code == 410 {
            ApiStatus::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue value from the response.")
        } else {
            e
        }
    })?;
    let mut matching = items
        .into_iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
        .filter(|(_, o)| labels.matches(o) && fields.matches(o));
    let mut page: Vec<Value> = Vec::new();
    let mut last_key: Option<(String, String)> = None;
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    for (k, o) in matching.by_ref() {
        if limit > 0 && page.len() == limit {
            let remaining = 1 + matching.count();
            if let Some((lns, lname)) = &last_key {
                meta["continue"] = json!(encode_continue(list_rv, lns, lname));
                if labels.is_empty() && fields == FieldSelector::default() {
                    meta["remainingItemCount"] = json!(remaining);
                }
            }
            let _ = k;
            break;
        }
        page.push((*o).clone());
        last_key = Some(k);
    }
    Ok(Reply::Json(200, render.list(page, meta), vec![]))
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn watch(
    ctx: &Ctx,
    res: &ResourceInfo,
    p: &ResourcePath,
    render: Render,
) -> Result<Reply, ApiStatus> {
    let q = &ctx.query;
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiStatus::bad_request)?;
    let mut field_str = q.get("fieldSelector").cloned().unwrap_or_default();
    if let Some(name) = &p.name {
        // GET .../name?watch=true or /watch/.../name watches one object.
        if !field_str.is_empty() {
            field_str.push(',');
        }
        field_str.push_str(&format!("metadata.name={name}"));
    }
    let fields = FieldSelector::parse(&field_str, &res.field_selector_paths())
        .map_err(ApiStatus::bad_request)?;
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let bookmarks = truthy(q, "allowWatchBookmarks");
    let initial_events = truthy(q, "sendInitialEvents");
    if initial_events {
        if q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
            return Err(ApiStatus::invalid("ListOptions", "meta.k8s.io", "", &[(
                "resourceVersionMatch".into(),
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
            )]));
        }
        if !bookmarks {
            return Err(ApiStatus::invalid(
                "ListOptions",
                "meta.k8s.io",
                "",
                &[(
                    "allowWatchBookmarks".into(),
                    "Forbidden: sendInitialEvents requires allowWatchBookmarks=true".into(),
                )],
            ));
        }
    }
    let from = if initial_events || rv_param.is_empty() || rv_param == "0" {
        None
    } else {
        Some(parse_rv(&rv_param)?)
    };
    let config = ctx.shared.config();
    let timeout = match q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()) {
        Some(t) => Duration::from_secs(t),
        None => config.default_watch_timeout,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let start = ctx.store().watch(res, p.namespace.as_deref(), from);
    let start = match start {
        Ok(s) => s,
        Err(status) => {
            // Like kube-apiserver's watch cache: 200, then an ERROR event.
            let _ = tx.try_send(watch_line("ERROR", &status.to_json()));
            return Ok(Reply::Stream(rx));
        }
    };
    let shared = ctx.shared.clone();
    let client = ctx.client.clone();
    let resource = res.plural.clone();
    let bookmark_kind = json!({"kind": res.kind, "apiVersion": res.api_version(&p.version)});
    tokio::spawn(async move {
        let stream = WatchStream {
            tx,
            render,
            labels,
            fields,
            shared,
            client,
            resource,
        };
        stream
            .run(
                start,
                initial_events,
                bookmarks,
                bookmark_kind,
                config.bookmark_interval,
                timeout,
            )
            .await;
    });
    Ok(Reply::Stream(rx))
}

struct WatchStream {
    tx: mpsc::Sender<Bytes>,
    render: Render,
    labels: LabelSelector,
    fields: FieldSelector,
    shared: Arc<Shared>,
    client: ClientId,
    /// Resource plural, for matching watch-delay rules.
    resource: String,
}

impl WatchStream {
    fn matches(&self, o: &Value) -> bool {
        self.labels.matches(o) && self.fields.matches(o)
    }

    /// Sends one line that came to be at `ready` (a change's commit), late
    /// by the client's watch delay and not while it is paused; false when
    /// the client has gone.
    async fn send(&self, line: Bytes, ready: Instant) -> bool {
        let deliver = async {
            let delay = self.shared.faults.watch_delay(&self.client, &self.resource);
            if !delay.is_zero() {
                tokio::time::sleep_until((ready + delay).into()).await;
            }
            self.shared.faults.wait_unpaused(&self.client).await;
            self.tx.send(line).await.is_ok()
        };
        tokio::select! {
            sent = deliver => sent,
            _ = self.tx.closed() => false,
        }
    }

    async fn deliver(&self, c: &Change) -> bool {
        let now = self.matches(&c.object);
        let before = c.prev.as_deref().is_some_and(|p| self.matches(p));
        let kind = match c.kind {
            ChangeKind::Added if now => "ADDED",
            ChangeKind::Modified if now && before => "MODIFIED",
            ChangeKind::Modified if now => "ADDED",
            ChangeKind::Modified if before => "DELETED",
            ChangeKind::Deleted if before || now => "DELETED",
            _ => return true,
        };
        self.send(
            watch_line(kind, &self.render.one(&c.object)),
            c.committed_at,
        )
        .await
    }

    async fn bookmark(&self, kind: &Value, rv: u64, initial_end: bool) -> bool {
        let mut obj = kind.clone();
        obj["metadata"] = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_end {
            obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.send(watch_line("BOOKMARK", &obj), Instant::now())
            .await
    }

    async fn run(
        self,
        start: super::store::WatchStart,
        initial_events: bool,
        bookmarks: bool,
        bookmark_kind: Value,
        interval: Duration,
        timeout: Duration,
    ) {
        let super::store::WatchStart {
            initial,
            backlog,
            rv,
            mut receiver,
        } = start;
        let deadline = tokio::time::Instant::now() + timeout;
        for o in &initial {
            if self.matches(o)
                && !self
                    .send(watch_line("ADDED", &self.render.one(o)), Instant::now())
                    .await
            {
                return;
            }
        }
        if initial_events && !self.bookmark(&bookmark_kind, rv, true).await {
            return;
        }
        for c in &backlog {
            if !self.deliver(c).await {
                return;
            }
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                change = receiver.recv() => match change {
                    Some(c) => if !self.deliver(&c).await { return },
                    None => return,
                },
                _ = tick.tick(), if bookmarks => {
                    // Everything up to the store's version is already in our
                    // queue (sent under the store lock): drain it first.
                    let rv = self.shared.store().resource_version();
                    while let Ok(c) = receiver.try_recv() {
                        if !self.deliver(&c).await { return }
                    }
                    if !self.bookmark(&bookmark_kind, rv, false).await { return }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = self.tx.closed() => return,
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn patch(
    ctx: &Ctx,
    res: &ResourceInfo,
    p: &ResourcePath,
    ns: &str,
    name: &str,
    target: WriteTarget,
    strict: bool,
    body: Bytes,
    render: &Render,
) -> Result<Reply, ApiStatus> {
    let ct = ctx
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let apply = ct == "application/apply-patch+yaml" || ct == "application/apply-patch+cbor";
    if !matches!(
        ct.as_str(),
        "application/merge-patch+json"
            | "application/json-patch+json"
            | "application/strategic-merge-patch+json"
    ) && ct != "application/apply-patch+yaml"
    {
        return Err(ApiStatus::unsupported_media_type(&ct));
    }
    if res.custom && ct == "application/strategic-merge-patch+json" {
        // kube-apiserver has no strategic merge for custom resources.
        return Err(ApiStatus::unsupported_media_type(&ct));
    }
    if body.is_empty() {
        return Err(ApiStatus::bad_request("the request body is empty"));
    }
    let patch_doc: Value = if apply {
        serde_yaml::from_slice(&body)
            .map_err(|e| ApiStatus::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiStatus::bad_request(format!("error decoding patch: {e}")))?
    };
    if apply {
        if ctx.query.get("fieldManager").is_none_or(|f| f.is_empty()) {
            return Err(ApiStatus::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                &[(
                    "fieldManager".into(),
                    "Required value: is required for apply patch".into(),
                )],
            ));
        }
        check_kind(res, &p.version, &patch_doc)?;
    }
    let mut store = ctx.store();
    if !apply && store.get(res, ns, name).is_err() {
        return Err(ApiStatus::not_found(super::status::Subject {
            group: &res.group,
            plural: &res.plural,
            name,
        }));
    }
    let is_create = apply && store.get(res, ns, name).is_err();
    let out = if is_create && target == WriteTarget::Main {
        store.create(res, ns, patch_doc, strict)?
    } else {
        let ct2 = ct.clone();
        store.update_with(res, ns, name, target, strict, move |old| {
            let Some(old) = old else {
                return Err(ApiStatus::not_found(super::status::Subject {
                    group: "",
                    plural: "",
                    name: "",
                }));
            };
            let mut doc = old.clone();
            match ct2.as_str() {
                "application/json-patch+json" => {
                    json_patch(&mut doc, &patch_doc).map_err(|e| {
                        ApiStatus::invalid(&res.kind, &res.group, name, &[("".into(), e)])
                    })?;
                }
                "application/strategic-merge-patch+json" => {
                    let mut pd = patch_doc;
                    strip_strategic_directives(&mut pd);
                    merge_patch(&mut doc, &pd);
                }
                _ => merge_patch(&mut doc, &patch_doc),
            }
            Ok(doc)
        })?
    };
    drop(store);
    Ok(Reply::Json(
        if out.created { 201 } else { 200 },
        render.one(&out.object),
        out.warnings,
    ))
}

async fn control(shared: Arc<Shared>, req: Request<Incoming>, rest: &str) -> Response<Body> {
    let method = req.method().clone();
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status_response(&ApiStatus::bad_request(format!("reading body: {e}"))),
    };
    let body_json = || -> Result<Value, ApiStatus> {
        if body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&body)
            .map_err(|e| ApiStatus::bad_request(format!("control body: {e}")))
    };
    let ok = |v: Value| json_response(200, &v);
    let result: Result<Response<Body>, ApiStatus> = async {
        match (method.clone(), rest.trim_end_matches('/')) {
            (Method::GET, "health") => Ok(ok(json!({"ok": true}))),
            (Method::GET, "requests") => Ok(ok(serde_json::to_value(shared.faults.log()).unwrap_or_default())),
            (Method::GET, "counters") => {
                let c: Vec<Value> = shared
                    .faults
                    .counters()
                    .into_iter()
                    .map(|(k, n)| json!({"verb": k.verb, "resource": k.resource, "userAgent": k.user_agent, "code": k.code, "count": n}))
                    .collect();
                Ok(ok(json!(c)))
            }
            (Method::GET, "writes") => Ok(ok(serde_json::to_value(shared.store().write_log()).unwrap_or_default())),
            (Method::DELETE, "writes") => {
                shared.store().clear_write_log();
                Ok(ok(json!({})))
            }
            (Method::DELETE, "requests") => {
                shared.faults.reset_observations();
                Ok(ok(json!({})))
            }
            (Method::GET, "faults") => {
                let rules: Vec<Value> = shared
                    .faults
                    .rules()
                    .into_iter()
                    .map(|(id, r)| json!({"id": id, "rule": r}))
                    .collect();
                Ok(ok(json!(rules)))
            }
            (Method::POST, "faults") => {
                let rule: FaultRule = serde_json::from_value(body_json()?)
                    .map_err(|e| ApiStatus::bad_request(format!("fault rule: {e}")))?;
                Ok(ok(json!({"id": shared.faults.add_rule(rule)})))
            }
            (Method::DELETE, "faults") => {
                shared.faults.clear_rules();
                Ok(ok(json!({})))
            }
            (Method::DELETE, r) if r.starts_with("faults/") => {
                let id: u64 = r["faults/".len()..].parse().map_err(|_| ApiStatus::bad_request("bad fault id"))?;
                Ok(ok(json!({"removed": shared.faults.remove_rule(id)})))
            }
            (Method::POST, "pause") => {
                let body = body_json()?;
                let m: ClientMatch = serde_json::from_value(body.get("client").cloned().unwrap_or(json!("all")))
                    .map_err(|e| ApiStatus::bad_request(format!("client match: {e}")))?;
                let duration = body.get("forMillis").and_then(Value::as_u64).map(Duration::from_millis);
                shared.faults.pause(m, duration);
                Ok(ok(json!({})))
            }
            (Method::POST, "unpause") => {
                match body_json()?.get("client").cloned() {
                    Some(c) => {
                        let m: ClientMatch = serde_json::from_value(c)
                            .map_err(|e| ApiStatus::bad_request(format!("client match: {e}")))?;
                        shared.faults.unpause(&m);
                    }
                    None => shared.faults.unpause_all(),
                }
                Ok(ok(json!({})))
            }
            (Method::POST, "drop-watches") => Ok(ok(json!({"dropped": shared.store().drop_watches()}))),
            (Method::POST, "compact") => {
                let mut s = shared.store();
                s.compact();
                Ok(ok(json!({"resourceVersion": s.resource_version().to_string()})))
            }
            (Method::POST, "restart") => {
                let downtime = body_json()?.get("downtimeMillis").and_then(Value::as_u64).unwrap_or(0);
                restart(
                    shared.clone(),
                    Duration::from_millis(50),
                    Duration::from_millis(downtime),
                );
                Ok(ok(json!({})))
            }
            _ => Err(ApiStatus::no_route()),
        }
    }
    .await;
    result.unwrap_or_else(|s| status_response(&s))
}

/// After `delay`, closes the listener and every connection (watches end),
/// waits `downtime`, then listens again on the same address. State is kept.
/// Returns immediately; the restart happens in the background.
pub fn restart(
    shared: Arc<Shared>,
    delay: Duration,
    downtime: Duration,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        // Over HTTP: let the control response go out before the
        // connections close.
        tokio::time::sleep(delay).await;
        shared.epoch.send_modify(|e| *e += 1);
        shared.store().drop_watches();
        tokio::time::sleep(downtime).await;
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(shared.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "rebinding after restart");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        tokio::spawn(accept_loop(listener, shared));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let Route::Resource(p) =
            route("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x")
        else {
            panic!()
        };
        assert_eq!(
            (
                p.group.as_str(),
                p.plural.as_str(),
                p.namespace.as_deref(),
                p.name.as_deref()
            ),
            (
                "coordination.k8s.io",
                "leases",
                Some("kube-system"),
                Some("x")
            )
        );
        let Route::Resource(p) = route("/api/v1/namespaces/foo") else {
            panic!()
        };
        assert_eq!(
            (p.plural.as_str(), p.name.as_deref()),
            ("namespaces", Some("foo"))
        );
        let Route::Resource(p) = route("/api/v1/namespaces/foo/status") else {
            panic!()
        };
        assert_eq!(
            (p.plural.as_str(), p.name.as_deref(), p.sub.as_deref()),
            ("namespaces", Some("foo"), Some("status"))
        );
        let Route::Resource(p) = route("/api/v1/watch/namespaces/default/services") else {
            panic!()
        };
        assert!(p.legacy_watch);
        assert!(matches!(
            route("/apis/cilium.io/v2alpha1"),
            Route::GroupVersion(..)
        ));
    }

    #[test]
    fn query_and_tokens() {
        let q = parse_query(Some("labelSelector=a%3Db%2Cc+in+%28x%29&watch=1"));
        assert_eq!(q["labelSelector"], "a=b,c in (x)");
        assert!(truthy(&q, "watch"));
        let t = encode_continue(42, "ns", "a/b");
        assert_eq!(decode_continue(&t), Some((42, "ns".into(), "a/b".into())));
        assert_eq!(decode_continue("zz"), None);
    }
}
