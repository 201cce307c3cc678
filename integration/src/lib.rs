//! integration: the lab (network namespaces as nodes on a bridge), the test
//! Kubernetes API server, probes, end-to-end tests and benchmarks.
/// The test Kubernetes API server (its own package, `kube-test-apiserver`).
pub use kube_test_apiserver as apiserver;
pub mod controlplane;
pub mod datapath_lab;
pub mod lab;
pub mod netns;
pub mod pcap;
pub mod probe;
pub mod prom;
pub mod rbac;
