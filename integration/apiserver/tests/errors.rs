//! Bad input gets the Kubernetes error a real kube-apiserver returns, and
//! the server keeps serving afterwards.

use kube_test_apiserver::{RawResponse, TestApiServer, raw_request};
use serde_json::Value;

async fn server() -> TestApiServer {
    TestApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start server")
}

async fn send(srv: &TestApiServer, method: &str, path: &str, ct: &str, body: &[u8]) -> RawResponse {
    let headers = [("Content-Type", ct), ("Accept", "application/json")];
    raw_request(srv.addr(), method, path, &headers, body)
        .await
        .expect("request")
}

/// Asserts a Status body with this code and reason; returns its message.
fn status(r: &RawResponse, code: u16, reason: &str) -> String {
    let v = r.json();
    assert_eq!(r.status, code, "body: {v}");
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["code"], code);
    assert_eq!(v["reason"], reason, "{v}");
    v["message"].as_str().unwrap_or_default().to_string()
}

async fn still_serving(srv: &TestApiServer) {
    let r = send(srv, "GET", "/version", "", b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["major"], "1");
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

#[tokio::test]
async fn malformed_json_is_400() {
    let srv = server().await;
    let r = send(
        &srv,
        "POST",
        LEASES,
        "application/json",
        b"{\"apiVersion\": ",
    )
    .await;
    let msg = status(&r, 400, "BadRequest");
    assert!(msg.contains("json parse error"), "{msg}");
    let r = send(&srv, "POST", LEASES, "application/json", b"[1, 2]").await;
    status(&r, 400, "BadRequest");
    let r = send(&srv, "POST", LEASES, "application/json", b"").await;
    status(&r, 400, "BadRequest");
    still_serving(&srv).await;
}

#[tokio::test]
async fn unknown_kinds_and_paths_are_404() {
    let srv = server().await;
    let body = br#"{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}"#;
    let r = send(
        &srv,
        "POST",
        "/apis/example.com/v1/namespaces/default/widgets",
        "application/json",
        body,
    )
    .await;
    let msg = status(&r, 404, "NotFound");
    assert_eq!(msg, "the server could not find the requested resource");
    let r = send(&srv, "GET", "/api/v1/namespaces/default/widgets", "", b"").await;
    status(&r, 404, "NotFound");
    let r = send(&srv, "GET", "/apis/example.com/v1", "", b"").await;
    status(&r, 404, "NotFound");
    // A cluster-scoped kind under a namespace path does not exist either.
    let r = send(&srv, "GET", "/api/v1/namespaces/default/nodes", "", b"").await;
    status(&r, 404, "NotFound");
    // A served version that does not exist.
    let r = send(
        &srv,
        "GET",
        "/apis/coordination.k8s.io/v1beta7/namespaces/default/leases",
        "",
        b"",
    )
    .await;
    status(&r, 404, "NotFound");
    still_serving(&srv).await;
}

#[tokio::test]
async fn wrong_api_version_or_kind_is_400() {
    let srv = server().await;
    let body =
        br#"{"apiVersion": "coordination.k8s.io/v2", "kind": "Lease", "metadata": {"name": "l"}}"#;
    let r = send(&srv, "POST", LEASES, "application/json", body).await;
    let msg = status(&r, 400, "BadRequest");
    assert_eq!(
        msg,
        "the API version in the data (coordination.k8s.io/v2) does not match the expected API version (coordination.k8s.io/v1)"
    );
    let body =
        br#"{"apiVersion": "coordination.k8s.io/v1", "kind": "Pod", "metadata": {"name": "l"}}"#;
    let r = send(&srv, "POST", LEASES, "application/json", body).await;
    status(&r, 400, "BadRequest");
    let body = br#"{"apiVersion": "coordination.k8s.io/v1", "metadata": {"name": "l"}}"#;
    let r = send(&srv, "POST", LEASES, "application/json", body).await;
    let msg = status(&r, 400, "BadRequest");
    assert!(msg.starts_with("Object 'Kind' is missing"), "{msg}");
    // Wrong field types fail decoding.
    let body = br#"{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": "long"}}"#;
    let r = send(&srv, "POST", LEASES, "application/json", body).await;
    status(&r, 400, "BadRequest");
    still_serving(&srv).await;
}

#[tokio::test]
async fn name_and_namespace_mismatches() {
    let srv = server().await;
    let body =
        br#"{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "a"}}"#;
    assert_eq!(
        send(&srv, "POST", LEASES, "application/json", body)
            .await
            .status,
        201
    );
    let r = send(
        &srv,
        "PUT",
        &format!("{LEASES}/b"),
        "application/json",
        body,
    )
    .await;
    let msg = status(&r, 400, "BadRequest");
    assert_eq!(
        msg,
        "the name of the object (a) does not match the name on the URL (b)"
    );
    let body = br#"{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "c", "namespace": "kube-system"}}"#;
    let r = send(&srv, "POST", LEASES, "application/json", body).await;
    let msg = status(&r, 400, "BadRequest");
    assert_eq!(
        msg,
        "the namespace of the provided object does not match the namespace sent on the request"
    );
    // Invalid names and missing names are 422 Invalid.
    let body = br#"{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "Not_Valid"}}"#;
    let r = send(&srv, "POST", LEASES, "application/json", body).await;
    status(&r, 422, "Invalid");
    assert_eq!(r.json()["details"]["causes"][0]["field"], "metadata.name");
    let body = br#"{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {}}"#;
    let r = send(&srv, "POST", LEASES, "application/json", body).await;
    let msg = status(&r, 422, "Invalid");
    assert!(msg.contains("name or generateName is required"), "{msg}");
    still_serving(&srv).await;
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let srv = server().await;
    let big = vec![b' '; 3 * 1024 * 1024 + 1];
    let r = send(&srv, "POST", LEASES, "application/json", &big).await;
    let msg = status(&r, 413, "RequestEntityTooLarge");
    assert_eq!(msg, "Request entity too large: limit is 3145728");
    still_serving(&srv).await;
}

#[tokio::test]
async fn content_types_fields_and_methods() {
    let srv = server().await;
    let body =
        br#"{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "a"}}"#;
    assert_eq!(
        send(&srv, "POST", LEASES, "application/json", body)
            .await
            .status,
        201
    );
    // Unknown patch type.
    let r = send(&srv, "PATCH", &format!("{LEASES}/a"), "text/plain", b"{}").await;
    status(&r, 415, "UnsupportedMediaType");
    // Protobuf bodies are not understood here.
    let r = send(
        &srv,
        "POST",
        LEASES,
        "application/vnd.kubernetes.protobuf",
        b"k8s\0",
    )
    .await;
    status(&r, 415, "UnsupportedMediaType");
    // Apply patches need a field manager.
    let r = send(
        &srv,
        "PATCH",
        &format!("{LEASES}/a"),
        "application/apply-patch+yaml",
        b"apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: a\n",
    )
    .await;
    status(&r, 422, "Invalid");
    // Strict field validation rejects unknown fields; default drops them with a warning.
    let unknown = br#"{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "u"}, "spec": {"bogus": 1}}"#;
    let r = send(
        &srv,
        "POST",
        &format!("{LEASES}?fieldValidation=Strict"),
        "application/json",
        unknown,
    )
    .await;
    let msg = status(&r, 400, "BadRequest");
    assert!(
        msg.contains("strict decoding error: unknown field \"spec.bogus\""),
        "{msg}"
    );
    let r = send(&srv, "POST", LEASES, "application/json", unknown).await;
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("warning"),
        Some(r#"299 - "unknown field \"spec.bogus\"""#)
    );
    assert_eq!(r.json()["spec"], Value::Object(Default::default()));
    // Bad selectors.
    let r = send(
        &srv,
        "GET",
        &format!("{LEASES}?labelSelector=a%20in%20b"),
        "",
        b"",
    )
    .await;
    status(&r, 400, "BadRequest");
    // Only JSON is offered.
    let r = raw_request(
        srv.addr(),
        "GET",
        LEASES,
        &[("Accept", "application/vnd.kubernetes.protobuf")],
        b"",
    )
    .await
    .unwrap();
    status(&r, 406, "NotAcceptable");
    // A verb a resource path does not have.
    let r = send(
        &srv,
        "POST",
        &format!("{LEASES}/a"),
        "application/json",
        body,
    )
    .await;
    status(&r, 405, "MethodNotAllowed");
    // Injected 500 and 429 are Status objects too.
    srv.fail_requests(500, 1.0);
    status(
        &send(&srv, "GET", LEASES, "", b"").await,
        500,
        "InternalError",
    );
    srv.clear_faults();
    still_serving(&srv).await;
}

#[tokio::test]
async fn discovery_documents() {
    let srv = server().await;
    let v2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    let r = raw_request(srv.addr(), "GET", "/apis", &[("Accept", v2)], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    );
    let v = r.json();
    assert_eq!(v["kind"], "APIGroupDiscoveryList");
    let coordination = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "coordination.k8s.io")
        .unwrap();
    assert_eq!(
        coordination["versions"][0]["resources"][0]["resource"],
        "leases"
    );
    assert_eq!(
        coordination["versions"][0]["resources"][0]["scope"],
        "Namespaced"
    );
    // kubectl 1.27 asks for v2beta1 only.
    let beta = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    let r = raw_request(srv.addr(), "GET", "/api", &[("Accept", beta)], b"")
        .await
        .unwrap();
    assert_eq!(r.json()["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    let core = &r.json()["items"][0];
    assert_eq!(core["metadata"]["name"], "");
    let services = core["versions"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "services")
        .unwrap();
    assert_eq!(services["subresources"][0]["subresource"], "status");
    // Legacy documents.
    let r = raw_request(srv.addr(), "GET", "/api", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.json()["versions"][0], "v1");
    let r = raw_request(srv.addr(), "GET", "/apis/discovery.k8s.io/v1", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.json()["resources"][0]["name"], "endpointslices");
    let r = raw_request(srv.addr(), "GET", "/apis", &[], b"")
        .await
        .unwrap();
    let names: Vec<String> = r.json()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    for g in [
        "apiextensions.k8s.io",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "events.k8s.io",
    ] {
        assert!(names.iter().any(|n| n == g), "{g} missing from {names:?}");
    }
    // OpenAPI v3 tells clients that fieldValidation is supported.
    let r = raw_request(srv.addr(), "GET", "/openapi/v3", &[], b"")
        .await
        .unwrap();
    let url = r.json()["paths"]["apis/coordination.k8s.io/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = raw_request(srv.addr(), "GET", &url, &[], b"")
        .await
        .unwrap()
        .json();
    let patch =
        &doc["paths"]["/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Lease");
    assert!(
        patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation")
    );
}

#[tokio::test]
async fn binary_prints_url_and_writes_kubeconfig() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr: std::net::SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    let config = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(config.contains(&format!("server: {url}")), "{config}");
    let r = raw_request(addr, "GET", "/version", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.json()["gitVersion"], "v1.33.0");
    child.kill().await.unwrap();
}
