//! integration: the lab (network namespaces as nodes on a bridge), the test
//! Kubernetes API server (re-exported), probes, end-to-end tests, the
//! chaos suite and benchmarks.
/// The test Kubernetes API server (its own package, `kube-test-apiserver`).
pub use kube_test_apiserver as apiserver;
pub mod bench_lab;
pub mod chaos;
pub mod control_plane_bench;
pub mod controlplane;
pub mod datapath_lab;
pub mod http;
pub mod lab;
pub mod mac;
pub mod ndp_sweep;
pub mod netns;
pub mod ns_probe;
pub mod pcap;
pub mod poll;
pub mod probe;
pub mod prom;
pub mod rbac;
pub mod resolvers;

/// The logs of the lab and chaos binaries: to stderr, filtered by
/// `RUST_LOG` (`warn` when unset or not understood).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
