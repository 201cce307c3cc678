//! Fidelity of the test API server as seen by kube-rs: watchers and
//! reflectors, resume and relist, optimistic concurrency, CRUD semantics,
//! selectors and paging, subresources, bookmarks, faults and the request log.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent,
    WatchParams,
};
use kube::runtime::{reflector, watcher};
use kube_test_apiserver::{ClientMatch, FaultAction, FaultRule, TestApiServer, raw_request};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(10);

/// Waits until `n` requests are held by a pause.
async fn wait_held(srv: &TestApiServer, n: usize) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while srv.held_requests() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} held requests, have {}",
            srv.held_requests()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn server() -> TestApiServer {
    TestApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start server")
}

fn cm(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "x"}},
        "data": {"v": value}
    }))
    .unwrap()
}

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}
    }))
    .unwrap()
}

/// Next watcher event that is not an error, within the deadline.
async fn next_event<S>(s: &mut S) -> watcher::Event<ConfigMap>
where
    S: futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(DEADLINE, s.next()).await {
            Ok(Some(Ok(e))) => return e,
            Ok(Some(Err(_))) => continue,
            Ok(None) => panic!("watcher ended"),
            Err(_) => panic!("no watcher event within {DEADLINE:?}"),
        }
    }
}

async fn wait_init_done<S>(s: &mut S)
where
    S: futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    while !matches!(next_event(s).await, watcher::Event::InitDone) {}
}

fn describe(e: &watcher::Event<ConfigMap>) -> Option<(String, String, String)> {
    let (t, o) = match e {
        watcher::Event::Apply(o) => ("apply", o),
        watcher::Event::Delete(o) => ("delete", o),
        _ => return None,
    };
    Some((
        t.to_string(),
        o.metadata.name.clone().unwrap_or_default(),
        o.data
            .as_ref()
            .and_then(|d| d.get("v"))
            .cloned()
            .unwrap_or_default(),
    ))
}

#[tokio::test]
async fn watcher_and_reflector_see_every_change_in_order() {
    let srv = server().await;
    let api: Api<ConfigMap> = Api::namespaced(srv.client().unwrap(), "default");
    api.create(&PostParams::default(), &cm("pre", "0"))
        .await
        .unwrap();

    let (reader, writer) = reflector::store();
    let mut stream = reflector(writer, watcher(api.clone(), watcher::Config::default())).boxed();
    // The initial list carries the pre-existing object.
    let mut init_names = Vec::new();
    loop {
        match next_event(&mut stream).await {
            watcher::Event::InitApply(o) => init_names.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(init_names, vec!["pre".to_string()]);

    api.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let mut b = api.get("b").await.unwrap();
    b.data = Some(BTreeMap::from([("v".to_string(), "3".to_string())]));
    api.replace("b", &PostParams::default(), &b).await.unwrap();
    api.delete("pre", &DeleteParams::default()).await.unwrap();

    let want = [
        ("apply", "a", "1"),
        ("apply", "a", "2"),
        ("apply", "b", "1"),
        ("delete", "a", "2"),
        ("apply", "b", "3"),
        ("delete", "pre", "0"),
    ];
    let mut seen = Vec::new();
    let mut last_rv = 0u64;
    while seen.len() < want.len() {
        let e = next_event(&mut stream).await;
        if let Some(d) = describe(&e) {
            let rv: u64 = match &e {
                watcher::Event::Apply(o) | watcher::Event::Delete(o) => o
                    .metadata
                    .resource_version
                    .as_deref()
                    .unwrap()
                    .parse()
                    .unwrap(),
                _ => unreachable!(),
            };
            assert!(
                rv > last_rv,
                "resourceVersions must increase: {rv} after {last_rv}"
            );
            last_rv = rv;
            seen.push(d);
        }
    }
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(seen, want);
    let state: Vec<(String, String)> = reader
        .state()
        .iter()
        .map(|o| {
            (
                o.metadata.name.clone().unwrap(),
                o.data.as_ref().unwrap()["v"].clone(),
            )
        })
        .collect();
    assert_eq!(state, vec![("b".to_string(), "3".to_string())]);
}

#[tokio::test]
async fn watcher_resumes_from_last_resource_version_after_dropped_watch() {
    let srv = server().await;
    let client = srv.client_with_user_agent("resume-test").unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    wait_init_done(&mut stream).await;
    api.create(&PostParams::default(), &cm("x1", "1"))
        .await
        .unwrap();
    let e = next_event(&mut stream).await;
    assert_eq!(describe(&e).unwrap().1, "x1");
    let last_rv = srv.resource_version();

    assert_eq!(srv.drop_watches(), 1);
    api.create(&PostParams::default(), &cm("x2", "1"))
        .await
        .unwrap();
    // The next event is x2 as a plain change: no relist (no Init) happened.
    let e = next_event(&mut stream).await;
    assert_eq!(
        describe(&e),
        Some(("apply".into(), "x2".into(), "1".into()))
    );
    let watches: Vec<_> = srv
        .request_log()
        .into_iter()
        .filter(|r| r.verb == "watch" && r.user_agent == "resume-test")
        .collect();
    assert_eq!(watches.len(), 2, "{watches:?}");
    assert!(
        watches[1]
            .query
            .contains(&format!("resourceVersion={last_rv}")),
        "re-watch must resume from {last_rv}: {}",
        watches[1].query
    );
    let lists = srv
        .request_log()
        .iter()
        .filter(|r| r.verb == "list")
        .count();
    assert_eq!(lists, 1, "no relist after a dropped watch");
}

#[tokio::test]
async fn watcher_relists_after_410_expired() {
    let srv = server().await;
    let client = srv.client_with_user_agent("relist-test").unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let admin: Api<ConfigMap> = Api::namespaced(srv.client().unwrap(), "default");
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    wait_init_done(&mut stream).await;

    // Hold the watcher's re-watch, change things and compact the history,
    // so the re-watch asks for a version the server no longer has.
    let me = ClientMatch::UserAgent("relist-test".into());
    srv.pause(me.clone());
    srv.drop_watches();
    admin
        .create(&PostParams::default(), &cm("y", "1"))
        .await
        .unwrap();
    srv.compact();
    srv.unpause(&me);

    let mut relisted = Vec::new();
    let mut saw_init = false;
    loop {
        match next_event(&mut stream).await {
            watcher::Event::Init => saw_init = true,
            watcher::Event::InitApply(o) => relisted.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("expected a relist, got {other:?}"),
        }
    }
    assert!(saw_init);
    assert_eq!(relisted, vec!["y".to_string()]);
    // The watch that found its version compacted got 200 + an ERROR event.
    let raw = raw_request(
        srv.addr(),
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(raw.status, 200);
    let line: serde_json::Value =
        serde_json::from_slice(raw.body.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["type"], "ERROR");
    assert_eq!(line["object"]["code"], 410);
    assert_eq!(line["object"]["reason"], "Expired");
}

#[tokio::test]
async fn concurrent_updates_with_same_resource_version_exactly_one_wins() {
    let srv = server().await;
    let api: Api<Lease> = Api::namespaced(srv.client().unwrap(), "kube-system");
    api.create(&PostParams::default(), &lease("l", "n0"))
        .await
        .unwrap();
    for round in 0..20 {
        let current = api.get("l").await.unwrap();
        let mut a = current.clone();
        a.spec.as_mut().unwrap().holder_identity = Some(format!("a{round}"));
        let mut b = current.clone();
        b.spec.as_mut().unwrap().holder_identity = Some(format!("b{round}"));
        let pp = PostParams::default();
        let (ra, rb) = tokio::join!(api.replace("l", &pp, &a), api.replace("l", &pp, &b));
        let oks = [ra.is_ok(), rb.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(oks, 1, "round {round}: exactly one update must win");
        let err = ra.err().or(rb.err()).unwrap();
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 409);
                assert_eq!(s.reason, "Conflict");
                assert!(
                    s.message.contains("the object has been modified"),
                    "{}",
                    s.message
                );
            }
            other => panic!("expected a 409, got {other}"),
        }
        let winner = api.get("l").await.unwrap();
        let holder = winner.spec.unwrap().holder_identity.unwrap();
        assert!(holder == format!("a{round}") || holder == format!("b{round}"));
    }
}

#[tokio::test]
async fn create_get_update_delete_semantics() {
    let srv = server().await;
    let client = srv.client().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // generateName, uid, creationTimestamp, resourceVersion, namespace.
    let mut gen_cm = cm("", "1");
    gen_cm.metadata.name = None;
    gen_cm.metadata.generate_name = Some("gen-".into());
    let created = api.create(&PostParams::default(), &gen_cm).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert!(
        created
            .metadata
            .uid
            .as_deref()
            .is_some_and(|u| u.len() == 36)
    );
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    let rv1: u64 = created
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();

    // AlreadyExists.
    let mut dup = cm(&name, "x");
    dup.metadata.namespace = None;
    match api.create(&PostParams::default(), &dup).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
            assert_eq!(s.message, format!("configmaps \"{name}\" already exists"));
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // NotFound wording.
    match api.get("missing").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
            assert_eq!(s.message, "configmaps \"missing\" not found");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A namespace that does not exist.
    let elsewhere: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    match elsewhere
        .create(&PostParams::default(), &cm("c", "1"))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(
            (s.code, s.message.as_str()),
            (404, "namespaces \"nowhere\" not found")
        ),
        other => panic!("expected NotFound, got {other:?}"),
    }

    // Update bumps the global resourceVersion; a no-op update does not.
    let mut upd = created.clone();
    upd.data = Some(BTreeMap::from([("v".into(), "2".into())]));
    let updated = api
        .replace(&name, &PostParams::default(), &upd)
        .await
        .unwrap();
    let rv2: u64 = updated
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);
    let same = api
        .replace(&name, &PostParams::default(), &updated)
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        updated.metadata.resource_version
    );
    // Stale update.
    match api.replace(&name, &PostParams::default(), &upd).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // A merge patch carrying a stale resourceVersion is a conflict too.
    let stale =
        Patch::Merge(json!({"metadata": {"resourceVersion": rv1.to_string()}, "data": {"v": "9"}}));
    match api.patch(&name, &PatchParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // JSON patch and strategic merge patch.
    // (kube is built without its json-patch feature: send this one raw.)
    let jp = raw_request(
        srv.addr(),
        "PATCH",
        &format!("/api/v1/namespaces/default/configmaps/{name}"),
        &[("Content-Type", "application/json-patch+json")],
        br#"[{"op": "add", "path": "/data/w", "value": "j"}]"#,
    )
    .await
    .unwrap();
    assert_eq!(jp.status, 200, "{}", String::from_utf8_lossy(&jp.body));
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"data": {"s": "t"}})),
    )
    .await
    .unwrap();
    let got = api.get(&name).await.unwrap().data.unwrap();
    assert_eq!(
        (got["v"].as_str(), got["w"].as_str(), got["s"].as_str()),
        ("2", "j", "t")
    );

    // Delete preconditions.
    let current = api.get(&name).await.unwrap();
    let bad = DeleteParams::default().preconditions(Preconditions {
        uid: Some("not-the-uid".into()),
        resource_version: None,
    });
    match api.delete(&name, &bad).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message
                    .contains("Precondition failed: UID in precondition"),
                "{}",
                s.message
            );
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let good = DeleteParams::background().preconditions(Preconditions {
        uid: current.metadata.uid.clone(),
        resource_version: current.metadata.resource_version.clone(),
    });
    api.delete(&name, &good).await.unwrap();
    assert!(api.get_opt(&name).await.unwrap().is_none());

    // Finalizers hold an object until removed.
    let mut fin = cm("fin", "1");
    fin.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &fin).await.unwrap();
    api.delete("fin", &DeleteParams::default()).await.unwrap();
    let held = api.get("fin").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("fin").await.unwrap().is_none());

    // Namespaces: defaults and cascading delete.
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    let team: Api<ConfigMap> = Api::namespaced(client, "team");
    team.create(&PostParams::default(), &cm("t", "1"))
        .await
        .unwrap();
    nss.delete("team", &DeleteParams::default()).await.unwrap();
    assert!(team.get_opt("t").await.unwrap().is_none());
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let srv = server().await;
    let client = srv.client().unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "red", "labels": {"color": "blue"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}
    }))
    .unwrap();
    let created = svcs.create(&PostParams::default(), &svc).await.unwrap();
    // Status in a create is ignored; defaults are filled in.
    assert_eq!(
        created
            .status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress,
        None
    );
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
    assert!(spec.cluster_ip.is_some());

    // Status writes change only status.
    let mut with_status = created.clone();
    with_status.status = svc.status.clone();
    with_status.spec.as_mut().unwrap().external_ips = Some(vec!["198.51.100.1".into()]);
    let after = svcs
        .replace_status("red", &PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(
        after
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("192.0.2.10")
    );
    assert_eq!(after.spec.unwrap().external_ips, None);
    // Main writes do not change status.
    svcs.patch("red", &PatchParams::default(), &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": []}}, "spec": {"externalIPs": ["198.51.100.2"]}})))
        .await
        .unwrap();
    let now = svcs.get("red").await.unwrap();
    assert_eq!(
        now.status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        now.spec.unwrap().external_ips.unwrap(),
        vec!["198.51.100.2".to_string()]
    );
    // get_status works.
    assert!(svcs.get_status("red").await.unwrap().status.is_some());

    // Custom resources: generation bumps on spec changes only.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let crd_yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/crd/ciliuml2announcementpolicies.yaml"
    ))
    .unwrap();
    let crd = serde_yaml::from_str(&crd_yaml).unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let established = created.status.unwrap().conditions.unwrap();
    assert!(
        established
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    let gvk =
        kube::api::GroupVersionKind::gvk("cilium.io", "v2alpha1", "CiliumL2AnnouncementPolicy");
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, "ciliuml2announcementpolicies");
    let pols: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &ar);
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/examples/l2-policy.yaml"
    ))
    .unwrap();
    let pol: kube::api::DynamicObject = serde_yaml::from_str(&example).unwrap();
    let p = pols.create(&PostParams::default(), &pol).await.unwrap();
    assert_eq!(p.metadata.generation, Some(1));
    assert_eq!(p.metadata.namespace, None);
    let p = pols
        .patch(
            "policy1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        p.metadata.generation,
        Some(1),
        "metadata changes keep the generation"
    );
    let p = pols
        .patch(
            "policy1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"externalIPs": false}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(2));
    let cond = json!({"status": {"conditions": [{"type": "io.cilium/bad-service-selector", "status": "False",
        "reason": "ok", "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
    let p = pols
        .patch_status("policy1", &PatchParams::default(), &Patch::Merge(cond))
        .await
        .unwrap();
    assert_eq!(
        p.metadata.generation,
        Some(2),
        "status writes keep the generation"
    );
    assert_eq!(p.data["status"]["conditions"][0]["reason"], "ok");
    assert_eq!(p.data["spec"]["externalIPs"], false);
    // Schema validation: wrong types are 422 Invalid.
    match pols
        .patch(
            "policy1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"interfaces": "eth0"}})),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (422, "Invalid")),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // Deleting the CRD removes the kind and its objects.
    crds.delete(
        "ciliuml2announcementpolicies.cilium.io",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    match pols.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404 after CRD deletion, got {other:?}"),
    }
}

#[tokio::test]
async fn list_selectors_and_paging() {
    let srv = server().await;
    let client = srv.client().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (n, color, tier) in [
        ("a", "blue", Some("web")),
        ("b", "red", None),
        ("c", "green", Some("db")),
    ] {
        let mut labels = json!({"color": color});
        if let Some(t) = tier {
            labels["tier"] = json!(t);
        }
        let o: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": n, "labels": labels}})).unwrap();
        api.create(&PostParams::default(), &o).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|o| o.metadata.name.unwrap())
            .collect()
    };
    for (sel, want) in [
        ("color=blue", vec!["a"]),
        ("color==red", vec!["b"]),
        ("color!=blue", vec!["b", "c"]),
        ("color in (red,green)", vec!["b", "c"]),
        ("color notin (red,green)", vec!["a"]),
        ("tier", vec!["a", "c"]),
        ("!tier", vec!["b"]),
        ("tier,color!=green", vec!["a"]),
    ] {
        let got = names(api.list(&ListParams::default().labels(sel)).await.unwrap());
        assert_eq!(got, want, "selector {sel}");
    }
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        vec!["b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.namespace!=default"))
                .await
                .unwrap()
        ),
        Vec::<String>::new()
    );
    match api
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 400);
            assert_eq!(s.message, "field label not supported: spec.nodeName");
        }
        other => panic!("expected 400, got {other:?}"),
    }
    // Pods support spec.nodeName.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (n, node) in [("p1", "n1"), ("p2", "n2")] {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": n}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}})).unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let on_n2 = pods
        .list(&ListParams::default().fields("spec.nodeName=n2"))
        .await
        .unwrap();
    assert_eq!(on_n2.items.len(), 1);
    assert_eq!(on_n2.items[0].metadata.name.as_deref(), Some("p2"));
    let all_pods: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        all_pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    // Paging: a consistent snapshot across pages even with writes between.
    let page1 = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(page1.clone()), vec!["a", "b"]);
    assert_eq!(page1.metadata.remaining_item_count, Some(1));
    let token = page1.metadata.continue_.clone().unwrap();
    api.create(&PostParams::default(), &cm("d", "1"))
        .await
        .unwrap();
    api.delete("c", &DeleteParams::default()).await.unwrap();
    let page2 = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        names(page2.clone()),
        vec!["c"],
        "page 2 comes from the first page's snapshot"
    );
    assert!(page2.metadata.continue_.is_none());
    assert_eq!(
        page2.metadata.resource_version,
        page1.metadata.resource_version
    );
    // A continue token older than the history is 410 Expired.
    srv.compact();
    match api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_bookmarks_timeouts_and_streaming_lists() {
    let srv = server().await;
    srv.set_bookmark_interval(Duration::from_millis(100));
    let client = srv.client().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    // Raw watch from "0": synthetic ADDED, then bookmarks; ends at timeoutSeconds.
    let mut s = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    let mut added = 0;
    let mut bookmarks = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Some(e) = tokio::time::timeout_at(deadline, s.try_next())
        .await
        .expect("watch must end by its timeout")
        .unwrap()
    {
        match e {
            WatchEvent::Added(_) => added += 1,
            WatchEvent::Bookmark(b) => {
                bookmarks += 1;
                assert_eq!(
                    b.metadata.resource_version,
                    srv.resource_version().to_string()
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, 1);
    assert!(bookmarks >= 1);

    // Streaming lists (sendInitialEvents) as kube-rs does them.
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut init = Vec::new();
    loop {
        match next_event(&mut stream).await {
            watcher::Event::InitApply(o) => init.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(init, vec!["a".to_string()]);
    api.create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    assert_eq!(describe(&next_event(&mut stream).await).unwrap().1, "b");

    // A label-selected watch sees objects leave and enter the selection.
    let mut sel = api
        .watch(&WatchParams::default().labels("color=blue"), "0")
        .await
        .unwrap()
        .boxed();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"color": "blue"}}})),
    )
    .await
    .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"color": "red"}}})),
    )
    .await
    .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match tokio::time::timeout(DEADLINE, sel.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(_) => kinds.push("ADDED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            _ => {}
        }
    }
    assert_eq!(kinds, vec!["ADDED", "DELETED"]);
}

#[tokio::test]
async fn faults_latency_errors_throttling_pause_restart() {
    let srv = server().await;
    let client = srv.client_with_user_agent("victim").unwrap();
    let other = srv.client_with_user_agent("bystander").unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let other_api: Api<ConfigMap> = Api::namespaced(other.clone(), "default");
    api.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();

    // Half the requests fail with 500, deterministically.
    let id = srv.fail_requests(500, 0.5);
    let mut failures = 0;
    for _ in 0..10 {
        if let Err(kube::Error::Api(s)) = api.get("a").await {
            assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
            failures += 1;
        }
    }
    assert_eq!(failures, 5);
    srv.remove_fault(id);

    // 429 with Retry-After.
    let id = srv.throttle(1.0, 3);
    let raw = raw_request(
        srv.addr(),
        "GET",
        "/api/v1/namespaces/default/configmaps/a",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(raw.status, 429);
    assert_eq!(raw.header("retry-after"), Some("3"));
    assert_eq!(raw.json()["reason"], "TooManyRequests");
    srv.remove_fault(id);

    // Latency for one client only (a lower bound; no upper-bound timing).
    srv.add_fault(FaultRule {
        client: ClientMatch::UserAgent("victim".into()),
        verb: Some("get".into()),
        resource: Some("configmaps".into()),
        action: FaultAction::Latency { millis: 300 },
    });
    let t = std::time::Instant::now();
    api.get("a").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    srv.clear_faults();

    // Pausing one client holds its requests; others go on.
    let victim = ClientMatch::UserAgent("victim".into());
    srv.pause(victim.clone());
    let held = tokio::spawn({
        let api = api.clone();
        async move { api.get("a").await }
    });
    other_api.get("a").await.unwrap();
    wait_held(&srv, 1).await;
    assert!(!held.is_finished());
    srv.unpause(&victim);
    tokio::time::timeout(DEADLINE, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Restart keeps state; clients reconnect; watchers resume without relist.
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    wait_init_done(&mut stream).await;
    srv.restart(Duration::from_millis(200)).await.unwrap();
    other_api
        .create(&PostParams::default(), &cm("after-restart", "1"))
        .await
        .unwrap();
    assert_eq!(api.get("a").await.unwrap().data.unwrap()["v"], "1");
    let e = next_event(&mut stream).await;
    assert_eq!(describe(&e).unwrap().1, "after-restart");
}

#[tokio::test]
async fn request_log_and_counters_over_rust_and_http() {
    let srv = server().await;
    let api: Api<Lease> = Api::namespaced(
        srv.client_with_user_agent("agent-x").unwrap(),
        "kube-system",
    );
    api.create(&PostParams::default(), &lease("l1", "n1"))
        .await
        .unwrap();
    api.get("l1").await.unwrap();
    let _ = api.get("nope").await;
    api.list(&ListParams::default()).await.unwrap();
    api.delete("l1", &DeleteParams::default()).await.unwrap();

    let log: Vec<_> = srv
        .request_log()
        .into_iter()
        .filter(|r| r.user_agent == "agent-x")
        .collect();
    let summary: Vec<(String, String, String, String, u16)> = log
        .iter()
        .map(|r| {
            (
                r.verb.clone(),
                r.resource.clone(),
                r.namespace.clone(),
                r.name.clone(),
                r.code,
            )
        })
        .collect();
    let s = |v: &str, n: &str, c: u16| {
        (
            v.to_string(),
            "leases".to_string(),
            "kube-system".to_string(),
            n.to_string(),
            c,
        )
    };
    assert_eq!(
        summary,
        vec![
            s("create", "", 201),
            s("get", "l1", 200),
            s("get", "nope", 404),
            s("list", "", 200),
            s("delete", "l1", 200)
        ]
    );
    assert!(
        log.iter()
            .all(|r| r.group == "coordination.k8s.io" && r.time_ms > 0)
    );
    let gets = srv
        .request_counts()
        .into_iter()
        .filter(|(k, _)| {
            k.verb == "get"
                && k.resource == "leases.coordination.k8s.io"
                && k.user_agent == "agent-x"
        })
        .map(|(_, n)| n)
        .sum::<u64>();
    assert_eq!(gets, 2);

    // The same over HTTP, and fault control over HTTP.
    let http_log = raw_request(srv.addr(), "GET", "/__control/requests", &[], b"")
        .await
        .unwrap()
        .json();
    let http_agent: Vec<_> = http_log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["userAgent"] == "agent-x")
        .collect();
    assert_eq!(http_agent.len(), 5);
    assert_eq!(http_agent[2]["code"], 404);
    let counters = raw_request(srv.addr(), "GET", "/__control/counters", &[], b"")
        .await
        .unwrap()
        .json();
    assert!(
        counters
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["verb"] == "create" && c["count"] == 1)
    );
    let rule = br#"{"action": {"type": "fail", "code": 500, "fraction": 1.0}, "verb": "get"}"#;
    let added = raw_request(srv.addr(), "POST", "/__control/faults", &[], rule)
        .await
        .unwrap();
    assert_eq!(
        added.status,
        200,
        "{}",
        String::from_utf8_lossy(&added.body)
    );
    match api.get("l1").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 500),
        other => panic!("expected injected 500, got {other:?}"),
    }
    raw_request(srv.addr(), "DELETE", "/__control/faults", &[], b"")
        .await
        .unwrap();
    let paused = raw_request(
        srv.addr(),
        "POST",
        "/__control/pause",
        &[],
        br#"{"client": {"userAgent": "agent-x"}}"#,
    )
    .await
    .unwrap();
    assert_eq!(paused.status, 200);
    let held = tokio::spawn({
        let api = api.clone();
        async move { api.list(&ListParams::default()).await }
    });
    raw_request(srv.addr(), "GET", "/__control/health", &[], b"")
        .await
        .unwrap();
    wait_held(&srv, 1).await;
    assert!(!held.is_finished());
    raw_request(srv.addr(), "POST", "/__control/unpause", &[], b"")
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let dropped = raw_request(srv.addr(), "POST", "/__control/drop-watches", &[], b"")
        .await
        .unwrap()
        .json();
    assert_eq!(dropped["dropped"], 0);

    // Restart over HTTP keeps state; the server is back after the downtime.
    let r = raw_request(
        srv.addr(),
        "POST",
        "/__control/restart",
        &[],
        br#"{"downtimeMillis": 100}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut refused = false;
    loop {
        match raw_request(srv.addr(), "GET", leases, &[], b"").await {
            Ok(r) if r.status == 200 && refused => {
                assert!(r.json()["items"].as_array().unwrap().is_empty());
                break;
            }
            Ok(_) => {}
            Err(_) => refused = true,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not come back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ok = api
        .create(&PostParams::default(), &lease("l2", "n1"))
        .await
        .unwrap();
    let rv: u64 = ok.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv > 3, "resourceVersions continue after a restart: {rv}");
    // Compaction over HTTP: a watch from an old version is Expired.
    raw_request(srv.addr(), "POST", "/__control/compact", &[], b"")
        .await
        .unwrap();
    let w = raw_request(
        srv.addr(),
        "GET",
        &format!("{leases}?watch=1&resourceVersion=2"),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&w.body).contains("\"reason\":\"Expired\""));
}

#[tokio::test]
async fn apply_patch_subset_creates_then_merges() {
    let srv = server().await;
    let api: Api<Lease> = Api::namespaced(srv.client().unwrap(), "kube-system");
    let applied = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "applied"}, "spec": {"holderIdentity": "n1"}});
    let pp = PatchParams::apply("test-manager");
    let created = api
        .patch("applied", &pp, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(created.spec.unwrap().holder_identity.as_deref(), Some("n1"));
    let again = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "applied"}, "spec": {"leaseDurationSeconds": 5}});
    let merged = api
        .patch("applied", &pp, &Patch::Apply(&again))
        .await
        .unwrap();
    let spec = merged.spec.unwrap();
    // Subset: fields left out of an apply are kept (no field ownership).
    assert_eq!(
        (spec.holder_identity.as_deref(), spec.lease_duration_seconds),
        (Some("n1"), Some(5))
    );
}
