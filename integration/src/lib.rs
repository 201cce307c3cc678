//! integration: the lab (network namespaces as nodes on a bridge), the test
//! Kubernetes API server, probes, end-to-end tests and benchmarks.
pub mod apiserver;
pub mod controlplane;
pub mod datapath_lab;
pub mod lab;
pub mod netns;
pub mod pcap;
pub mod probe;
pub mod prom;
pub mod rbac;
