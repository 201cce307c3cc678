//! statedb: typed, sled-backed state tables with revisions, change streams and
//! a generic reconciler. It knows nothing of networking or Kubernetes.
