//! deploy/ as a kustomize base: `kubectl kustomize deploy/` renders, holds
//! the expected objects, the DaemonSet carries the security settings and
//! probes the agent needs, and RBAC grants nothing outside a documented
//! allow-list of what the agent does.
//!
//! Needs `kubectl` (it renders offline; no cluster is contacted).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

fn render() -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join("deploy"))
        .output()
        .expect("run kubectl (install kubectl)");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

fn one<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| kind(d) == k).collect();
    assert_eq!(found.len(), 1, "expected one {k}, got {}", found.len());
    found[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn renders_the_expected_objects() {
    let docs = render();
    let kinds: BTreeMap<String, Vec<String>> = docs.iter().fold(BTreeMap::new(), |mut m, d| {
        m.entry(kind(d).to_string())
            .or_default()
            .push(name(d).to_string());
        m
    });
    for k in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "DaemonSet",
    ] {
        assert!(kinds.contains_key(k), "{k} missing from {kinds:?}");
    }
    assert_eq!(
        name(one(&docs, "CustomResourceDefinition")),
        "ciliuml2announcementpolicies.cilium.io"
    );
    // Namespaced objects all live where the leases are.
    for d in &docs {
        if !matches!(
            kind(d),
            "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding"
        ) {
            assert_eq!(
                d["metadata"]["namespace"].as_str(),
                Some("kube-system"),
                "{} {}",
                kind(d),
                name(d)
            );
        }
    }
    // Bindings name the ServiceAccount the DaemonSet runs as.
    let sa = name(one(&docs, "ServiceAccount"));
    let ds = one(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"].as_str(),
        Some(sa)
    );
    for b in ["ClusterRoleBinding", "RoleBinding"] {
        let binding = one(&docs, b);
        assert_eq!(binding["subjects"][0]["name"].as_str(), Some(sa), "{b}");
        assert_eq!(
            binding["subjects"][0]["namespace"].as_str(),
            Some("kube-system"),
            "{b}"
        );
        let role_kind = if b == "RoleBinding" {
            "Role"
        } else {
            "ClusterRole"
        };
        assert_eq!(binding["roleRef"]["kind"].as_str(), Some(role_kind));
        assert_eq!(
            binding["roleRef"]["name"].as_str(),
            Some(name(one(&docs, role_kind)))
        );
    }
}

#[test]
fn configmap_uses_cilium_option_names() {
    let docs = render();
    let cm = one(&docs, "ConfigMap");
    assert_eq!(name(cm), "l2announcer-config");
    let data = &cm["data"];
    assert_eq!(data["enable-l2-announcements"].as_str(), Some("true"));
    for key in [
        "l2-announcements-lease-duration",
        "l2-announcements-renew-deadline",
        "l2-announcements-retry-period",
        "k8s-client-qps",
        "k8s-client-burst",
    ] {
        assert!(data[key].as_str().is_some_and(|v| !v.is_empty()), "{key}");
    }
    assert_eq!(data["devices"].as_str(), Some(""));
}

#[test]
fn daemonset_security_probes_and_volumes() {
    let docs = render();
    let ds = one(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(pod["dnsPolicy"].as_str(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["type"].as_str(),
        Some("RollingUpdate")
    );
    // Tolerates every taint.
    let tolerations = pod["tolerations"].as_sequence().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_null()),
        "{tolerations:?}"
    );
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        strings(&c["args"]),
        ["run", "--config-dir=/etc/l2announcer"]
    );

    let env = c["env"].as_sequence().unwrap();
    let node = env
        .iter()
        .find(|e| e["name"].as_str() == Some("K8S_NODE_NAME"))
        .expect("K8S_NODE_NAME env");
    assert_eq!(
        node["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("spec.nodeName")
    );

    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_ne!(sc["privileged"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let added: BTreeSet<String> = strings(&sc["capabilities"]["add"]).into_iter().collect();
    let allowed: BTreeSet<String> = ["NET_ADMIN", "NET_RAW", "BPF", "PERFMON", "SYS_RESOURCE"]
        .map(String::from)
        .into();
    assert_eq!(added, allowed);

    let ports = c["ports"].as_sequence().unwrap();
    let metrics = ports
        .iter()
        .find(|p| p["name"].as_str() == Some("metrics"))
        .expect("metrics port");
    assert_eq!(metrics["containerPort"].as_u64(), Some(9972));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("metrics"), "{probe}");
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("9972"));

    for r in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][r][res].as_str().is_some(),
                "resources.{r}.{res}"
            );
        }
    }

    // Volumes: config at /etc/l2announcer, bpffs and state from the host,
    // the API socket in an emptyDir.
    let mounts: BTreeMap<String, (String, Value)> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_string(),
                (m["name"].as_str().unwrap().to_string(), m.clone()),
            )
        })
        .collect();
    let volumes: BTreeMap<String, Value> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    let volume_at = |path: &str| -> &Value {
        let (vname, _) = mounts
            .get(path)
            .unwrap_or_else(|| panic!("no mount at {path}"));
        volumes
            .get(vname)
            .unwrap_or_else(|| panic!("no volume {vname}"))
    };
    assert_eq!(
        volume_at("/etc/l2announcer")["configMap"]["name"].as_str(),
        Some("l2announcer-config")
    );
    assert_eq!(
        volume_at("/sys/fs/bpf")["hostPath"]["path"].as_str(),
        Some("/sys/fs/bpf")
    );
    // Bidirectional propagation would need a privileged container.
    assert_eq!(
        mounts["/sys/fs/bpf"].1["mountPropagation"].as_str(),
        Some("HostToContainer")
    );
    assert_eq!(
        volume_at("/var/lib/l2announcer")["hostPath"]["path"].as_str(),
        Some("/var/lib/l2announcer")
    );
    assert!(volume_at("/var/run/l2announcer")["emptyDir"].is_mapping());
    assert_eq!(
        mounts["/etc/l2announcer"].1["readOnly"].as_bool(),
        Some(true)
    );
}

/// The rendered DaemonSet runs the image `cargo xtask image` builds: the
/// name `l2announcer` at the workspace version, as daemonset.yaml itself and
/// kustomization.yaml's `images:` both say (an overlay's `images:` points it
/// at a registry).
#[test]
fn daemonset_image_is_the_workspace_version() {
    let expected = format!("l2announcer:{}", env!("CARGO_PKG_VERSION"));
    let docs = render();
    let ds = one(&docs, "DaemonSet");
    let images: Vec<&str> = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(images, [expected.as_str()]);
    assert!(
        ds["spec"]["template"]["spec"]["initContainers"].is_null(),
        "no other image"
    );

    let raw: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/daemonset.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        raw["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
        Some(expected.as_str()),
        "deploy/daemonset.yaml"
    );
    let kustomization: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let entries = kustomization["images"].as_sequence().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["name"].as_str(), Some("l2announcer"));
    // The base names no registry; overlays add newName.
    assert!(entries[0]["newName"].is_null(), "{entries:?}");
    assert_eq!(
        entries[0]["newTag"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "deploy/kustomization.yaml newTag (a string)"
    );
}

/// Every (API group, resource, verb) the agent is allowed, with why. A rule
/// granting anything else fails the test; so does a grant listed here that
/// no rule gives (the list and the roles must agree).
///
/// * services, nodes, endpointslices — list/watch: the watchers behind
///   candidacy (Service IPs and labels, node labels, local endpoints).
/// * pods — list/watch: L2 pod announcements, the pods of this node.
/// * ciliuml2announcementpolicies — list/watch; its status — patch:
///   the policy actor's watch and its status conditions.
/// * events (events.k8s.io) — create/patch: Events on Services.
/// * leases (Role, kube-system only) — create/update/list/watch/delete:
///   acquire, renew, follow, collect stale ones.
const CLUSTER_ALLOWED: &[(&str, &str, &[&str])] = &[
    ("", "services", &["list", "watch"]),
    ("", "services/status", &["patch"]),
    ("", "nodes", &["list", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    (
        "cilium.io",
        "ciliuml2announcementpolicies",
        &["list", "watch"],
    ),
    (
        "cilium.io",
        "ciliuml2announcementpolicies/status",
        &["patch"],
    ),
    ("events.k8s.io", "events", &["create", "patch"]),
];
const NAMESPACE_ALLOWED: &[(&str, &str, &[&str])] = &[
    (
        "coordination.k8s.io",
        "leases",
        &["create", "update", "patch", "list", "watch", "delete"],
    ),
    ("", "configmaps", &["create", "update", "list", "watch"]),
];

type Grant = (String, String, String);

fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().unwrap() {
        assert!(
            rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null(),
            "unexpected rule shape {rule:?}"
        );
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    assert!(g != "*" && r != "*" && v != "*", "wildcard in {rule:?}");
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

fn allowed(list: &[(&str, &str, &[&str])]) -> BTreeSet<Grant> {
    list.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn rbac_grants_exactly_the_allow_list() {
    let docs = render();
    let cluster = grants(one(&docs, "ClusterRole"));
    let namespaced = grants(one(&docs, "Role"));
    assert_eq!(cluster, allowed(CLUSTER_ALLOWED), "ClusterRole");
    assert_eq!(namespaced, allowed(NAMESPACE_ALLOWED), "Role");
    assert_eq!(
        one(&docs, "Role")["metadata"]["namespace"].as_str(),
        Some("kube-system")
    );
    // And the comparison is not vacuous: an extra grant is noticed.
    let mut wider = cluster.clone();
    wider.insert(("".into(), "secrets".into(), "get".into()));
    assert_ne!(wider, allowed(CLUSTER_ALLOWED));
}

#[test]
fn examples_use_documentation_addresses_only() {
    let dir = repo_root().join("deploy/examples");
    let mut services = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if kind(&v) != "Service" {
                continue;
            }
            services += 1;
            let mut ips = strings(&v["spec"]["externalIPs"]);
            if let Some(ingress) = v["status"]["loadBalancer"]["ingress"].as_sequence() {
                ips.extend(
                    ingress
                        .iter()
                        .filter_map(|i| i["ip"].as_str().map(String::from)),
                );
            }
            assert!(!ips.is_empty(), "{} announces no IP", path.display());
            for ip in ips {
                let addr: std::net::IpAddr = ip.parse().unwrap();
                let ok = match addr {
                    std::net::IpAddr::V4(a) => a.octets()[..3] == [192, 0, 2],
                    std::net::IpAddr::V6(a) => a.segments()[..2] == [0x2001, 0x0db8],
                };
                assert!(
                    ok,
                    "{}: {ip} is not a documentation address",
                    path.display()
                );
            }
        }
    }
    assert!(
        services >= 2,
        "expected a LoadBalancer and an externalIPs Service"
    );
}

/// `kubectl apply -k deploy/` against the test API server creates every
/// object, and they read back.
#[test]
fn kubectl_apply_k_deploy_against_the_test_api_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt
        .block_on(integration::apiserver::TestApiServer::start(
            "127.0.0.1:0".parse().expect("addr"),
        ))
        .expect("api server");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    };
    let mut apply_ns = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    {
        use std::io::Write;
        let mut stdin = apply_ns.stdin.take().expect("stdin");
        stdin
            .write_all(b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-system\n")
            .expect("write");
    }
    assert!(apply_ns.wait().expect("wait").success());
    let out = kubectl(&[
        "apply",
        "-k",
        repo_root().join("deploy").to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "kubectl apply -k deploy/: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "customresourcedefinition.apiextensions.k8s.io/ciliuml2announcementpolicies.cilium.io",
        "serviceaccount/l2announcer",
        "clusterrole.rbac.authorization.k8s.io/l2announcer",
        "daemonset.apps/l2announcer",
        "configmap/",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    let out = kubectl(&[
        "get",
        "daemonset",
        "-n",
        "kube-system",
        "l2announcer",
        "-o",
        "name",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "daemonset.apps/l2announcer"
    );
    // Applying again changes nothing and still succeeds.
    let out = kubectl(&[
        "apply",
        "-k",
        repo_root().join("deploy").to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
