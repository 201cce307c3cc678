//! A real `kubectl` (1.33 and 1.27 when installed, else the one on PATH)
//! against the test API server: apply the CRD and the example policy, get,
//! describe, leases, patch, delete and `get -w`. Fails when there is no
//! kubectl at all.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube_test_apiserver::{TestApiServer, kubectl_binaries};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/crd/ciliuml2announcementpolicies.yaml"
);
const POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/examples/l2-policy.yaml"
);

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Out {
        let out = tokio::time::timeout(Duration::from_secs(30), self.command(args).output())
            .await
            .expect("kubectl timed out")
            .expect("run kubectl");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert_eq!(
            o.code, 0,
            "kubectl {args:?} failed: {}{}",
            o.stdout, o.stderr
        );
        o.stdout
    }
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("watch line")
        .unwrap()
        .expect("watch output ended")
}

fn table_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

async fn exercise(version: &str, bin: &Path) {
    let srv = TestApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl {
        bin: bin.to_path_buf(),
        kubeconfig: dir.path().join("kubeconfig"),
        cache: dir.path().join("cache"),
    };
    srv.write_kubeconfig(&k.kubeconfig).unwrap();

    let out = k.ok(&["apply", "-f", CRD]).await;
    assert_eq!(
        out.trim(),
        "customresourcedefinition.apiextensions.k8s.io/ciliuml2announcementpolicies.cilium.io created",
        "{version}"
    );
    let out = k.ok(&["apply", "-f", POLICY]).await;
    assert_eq!(
        out.trim(),
        "ciliuml2announcementpolicy.cilium.io/policy1 created",
        "{version}"
    );
    let out = k.ok(&["apply", "-f", POLICY]).await;
    assert_eq!(
        out.trim(),
        "ciliuml2announcementpolicy.cilium.io/policy1 unchanged",
        "{version}"
    );

    // get: the reference's columns (NAME AGE), by kind name and short name.
    let rows = table_rows(&k.ok(&["get", "CiliumL2AnnouncementPolicy"]).await);
    assert_eq!(rows[0], vec!["NAME", "AGE"], "{version}");
    assert_eq!(rows[1][0], "policy1");
    assert!(rows[1][1].ends_with('s'), "age column: {:?}", rows[1]);
    let out = k
        .ok(&[
            "get",
            "l2announcement",
            "policy1",
            "-o",
            "jsonpath={.spec.interfaces[0]} {.spec.serviceSelector.matchLabels.color}",
        ])
        .await;
    assert_eq!(out, "^eth[0-9]+ blue");

    // describe.
    let out = k
        .ok(&["describe", "ciliuml2announcementpolicy", "policy1"])
        .await;
    assert!(out.contains("Name:         policy1"), "{out}");
    assert!(
        out.contains("Kind:         CiliumL2AnnouncementPolicy"),
        "{out}"
    );
    assert!(
        out.contains("node-role.kubernetes.io/control-plane"),
        "{out}"
    );

    // Leases in kube-system with the HOLDER column.
    let lease = dir.path().join("lease.yaml");
    std::fs::write(
        &lease,
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: cilium-l2announce-default-service-red\n  namespace: kube-system\nspec:\n  holderIdentity: kind-worker\n  leaseDurationSeconds: 15\n",
    )
    .unwrap();
    k.ok(&["apply", "-f", lease.to_str().unwrap()]).await;
    let rows = table_rows(&k.ok(&["-n", "kube-system", "get", "lease"]).await);
    assert_eq!(rows[0], vec!["NAME", "HOLDER", "AGE"], "{version}");
    assert_eq!(
        rows[1][..2],
        [
            "cilium-l2announce-default-service-red".to_string(),
            "kind-worker".to_string()
        ]
    );
    let out = k
        .ok(&[
            "-n",
            "kube-system",
            "describe",
            "lease",
            "cilium-l2announce-default-service-red",
        ])
        .await;
    assert!(
        out.contains("Holder Identity:") && out.contains("kind-worker"),
        "{out}"
    );

    // get -w: the current state, then a change made while watching.
    let mut watch = k
        .command(&["get", "l2announcement", "-w", "--no-headers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = next_line(&mut lines).await;
    assert!(first.starts_with("policy1 "), "{first:?}");
    // Only change once the watch is established (the server counts it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while srv.watch_count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "kubectl never started watching"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // patch (merge and json; strategic is 415 for custom resources as on a real server).
    let out = k
        .ok(&[
            "patch",
            "l2announcement",
            "policy1",
            "--type=merge",
            "-p",
            r#"{"spec":{"externalIPs":false}}"#,
        ])
        .await;
    assert_eq!(
        out.trim(),
        "ciliuml2announcementpolicy.cilium.io/policy1 patched"
    );
    let second = next_line(&mut lines).await;
    assert!(second.starts_with("policy1 "), "{second:?}");
    k.ok(&[
        "patch",
        "l2announcement",
        "policy1",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/loadBalancerIPs","value":false}]"#,
    ])
    .await;
    let out = k
        .ok(&[
            "get",
            "l2announcement",
            "policy1",
            "-o",
            "jsonpath={.spec.externalIPs} {.spec.loadBalancerIPs} {.metadata.generation}",
        ])
        .await;
    assert_eq!(out, "false false 3");
    let o = k
        .run(&[
            "patch",
            "l2announcement",
            "policy1",
            "-p",
            r#"{"spec":{"externalIPs":true}}"#,
        ])
        .await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("application/strategic-merge-patch+json is not supported"),
        "{}",
        o.stderr
    );
    watch.kill().await.unwrap();

    // Bad manifests fail with the server's reason.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(POLICY)
            .unwrap()
            .replace("externalIPs: true", "externalIPs: \"yes\"\n  bogus: 1"),
    )
    .unwrap();
    let o = k.run(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("unknown field \"spec.bogus\""),
        "{version}: {}",
        o.stderr
    );
    let o = k.run(&["get", "widgets"]).await;
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("the server doesn't have a resource type \"widgets\""),
        "{}",
        o.stderr
    );

    // delete.
    let out = k.ok(&["delete", "-f", POLICY]).await;
    assert_eq!(
        out.trim(),
        "ciliuml2announcementpolicy.cilium.io \"policy1\" deleted"
    );
    let o = k.run(&["get", "l2announcement", "policy1"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("ciliuml2announcementpolicies.cilium.io \"policy1\" not found"),
        "{}",
        o.stderr
    );
    let out = k.ok(&["get", "l2announcement"]).await;
    assert_eq!(out, "");
    k.ok(&["delete", "-f", CRD]).await;
    let o = k.run(&["get", "l2announcement"]).await;
    assert_ne!(o.code, 0, "{version}: the kind is gone with its CRD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_against_test_apiserver() {
    let found = kubectl_binaries();
    assert!(
        !found.is_empty(),
        "no kubectl found (looked in /usr/lib/google-cloud-sdk/bin and PATH)"
    );
    for v in ["1.33", "1.27"] {
        if !found.iter().any(|(f, _)| f == v) {
            eprintln!("kubectl {v} not installed; skipping that version");
        }
    }
    for (version, bin) in &found {
        exercise(version, bin).await;
    }
}
