//! integration: the lab (network namespaces as nodes on a bridge), the test
//! Kubernetes API server, probes, end-to-end tests and benchmarks.
