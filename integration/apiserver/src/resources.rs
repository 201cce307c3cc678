//! The kinds the test API server serves: the built-in ones this project
//! needs and custom resources declared by CRDs.

use serde_json::Value;

/// A printer column of `kubectl get` (Table output).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    /// OpenAPI type: string, integer, number, boolean, date (shown as an
    /// age); or "timestamp" (shown raw; replaces the AGE column).
    pub type_: String,
    /// Simple JSON path (`.spec.holderIdentity`), as in CRD
    /// `additionalPrinterColumns`.
    pub json_path: String,
    pub priority: i64,
}

/// How one resource is served.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    /// API group, "" for core.
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    /// Has a `/status` subresource: main writes keep status, status writes
    /// keep everything else.
    pub status: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// PUT of a missing object creates it (leases, events).
    pub create_on_update: bool,
    /// Maintains `metadata.generation` (CRDs and custom resources).
    pub generation: bool,
    /// Served because a CRD declares it.
    pub custom: bool,
    /// Status is cleared on create (services, pods, custom resources with a
    /// status subresource).
    pub reset_status_on_create: bool,
    /// Field selector paths besides metadata.name / metadata.namespace.
    pub field_selectors: Vec<String>,
    /// Extra Table columns between NAME and AGE.
    pub printer_columns: Vec<PrinterColumn>,
    /// openAPIV3Schema per served version (custom resources).
    pub schemas: Vec<(String, Value)>,
}

impl ResourceInfo {
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    pub fn preferred_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    pub fn field_selector_paths(&self) -> Vec<&str> {
        self.field_selectors.iter().map(String::as_str).collect()
    }

    pub fn schema(&self, version: &str) -> Option<&Value> {
        self.schemas
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, s)| s)
    }
}

fn col(name: &str, type_: &str, json_path: &str) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        json_path: json_path.into(),
        priority: 0,
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    plural: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    status: bool,
    short_names: &[&str],
    fields: &[&str],
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        versions: vec!["v1".into()],
        plural: plural.into(),
        singular: singular.into(),
        kind: kind.into(),
        namespaced,
        status,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        create_on_update: false,
        generation: false,
        custom: false,
        reset_status_on_create: false,
        field_selectors: fields.iter().map(|s| s.to_string()).collect(),
        printer_columns: Vec::new(),
        schemas: Vec::new(),
    }
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

/// The built-in resources, in discovery order.
pub fn builtins() -> Vec<ResourceInfo> {
    let mut services = builtin(
        "",
        "services",
        "service",
        "Service",
        true,
        true,
        &["svc"],
        &["spec.clusterIP", "spec.type"],
    );
    services.reset_status_on_create = true;
    services.categories = vec!["all".into()];
    services.printer_columns = vec![
        col("Type", "string", ".spec.type"),
        col("Cluster-IP", "string", ".spec.clusterIP"),
        col("External-IP", "string", "__external_ip"),
        col("Port(s)", "string", "__ports"),
    ];
    let mut nodes = builtin(
        "",
        "nodes",
        "node",
        "Node",
        false,
        true,
        &["no"],
        &["spec.unschedulable"],
    );
    nodes.printer_columns = vec![
        col("Status", "string", "__node_ready"),
        col("Version", "string", ".status.nodeInfo.kubeletVersion"),
    ];
    let mut pods = builtin(
        "",
        "pods",
        "pod",
        "Pod",
        true,
        true,
        &["po"],
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    );
    pods.reset_status_on_create = true;
    pods.categories = vec!["all".into()];
    pods.printer_columns = vec![col("Status", "string", ".status.phase")];
    let mut namespaces = builtin(
        "",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        true,
        &["ns"],
        &["status.phase"],
    );
    namespaces.printer_columns = vec![col("Status", "string", ".status.phase")];
    let mut events = builtin(
        "",
        "events",
        "event",
        "Event",
        true,
        false,
        &["ev"],
        EVENT_FIELDS,
    );
    events.create_on_update = true;
    events.printer_columns = vec![
        col("Type", "string", ".type"),
        col("Reason", "string", ".reason"),
        col("Object", "string", "__involved"),
        col("Message", "string", ".message"),
    ];
    let mut configmaps = builtin(
        "",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        false,
        &["cm"],
        &[],
    );
    configmaps.printer_columns = vec![col("Data", "integer", "__data_count")];
    let mut slices = builtin(
        "discovery.k8s.io",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        false,
        &[],
        &[],
    );
    slices.printer_columns = vec![col("AddressType", "string", ".addressType")];
    let mut leases = builtin(
        "coordination.k8s.io",
        "leases",
        "lease",
        "Lease",
        true,
        false,
        &[],
        &[],
    );
    leases.create_on_update = true;
    leases.printer_columns = vec![col("Holder", "string", ".spec.holderIdentity")];
    let mut events_v1 = builtin(
        "events.k8s.io",
        "events",
        "event",
        "Event",
        true,
        false,
        &["ev"],
        &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reason",
            "reportingController",
            "type",
        ],
    );
    events_v1.create_on_update = true;
    let mut crds = builtin(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        true,
        &["crd", "crds"],
        &[],
    );
    crds.generation = true;
    crds.categories = vec!["api-extensions".into()];
    crds.printer_columns = vec![col(
        "Created At",
        "timestamp",
        ".metadata.creationTimestamp",
    )];
    // What `kubectl apply -k deploy/` creates besides the CRD.
    let service_accounts = builtin(
        "",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        false,
        &["sa"],
        &[],
    );
    let mut daemonsets = builtin(
        "apps",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        true,
        &["ds"],
        &[],
    );
    daemonsets.generation = true;
    daemonsets.reset_status_on_create = true;
    daemonsets.categories = vec!["all".into()];
    let rbac = |plural: &str, singular: &str, kind: &str, namespaced: bool| {
        builtin(
            "rbac.authorization.k8s.io",
            plural,
            singular,
            kind,
            namespaced,
            false,
            &[],
            &[],
        )
    };
    vec![
        namespaces,
        nodes,
        pods,
        services,
        events,
        configmaps,
        slices,
        leases,
        events_v1,
        crds,
        service_accounts,
        daemonsets,
        rbac("clusterroles", "clusterrole", "ClusterRole", false),
        rbac(
            "clusterrolebindings",
            "clusterrolebinding",
            "ClusterRoleBinding",
            false,
        ),
        rbac("roles", "role", "Role", true),
        rbac("rolebindings", "rolebinding", "RoleBinding", true),
    ]
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Validates a CRD body and derives how its kind is served. Errors are
/// `(field, message)` pairs for a 422 Invalid.
pub fn from_crd(crd: &Value) -> Result<ResourceInfo, Vec<(String, String)>> {
    let mut errs = Vec::new();
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let s = |p: &str| {
        spec.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let group = s("/group");
    let plural = s("/names/plural");
    let kind = s("/names/kind");
    let scope = s("/scope");
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if group.is_empty() || !group.contains('.') {
        errs.push((
            "spec.group".into(),
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        ));
    }
    if plural.is_empty() {
        errs.push(("spec.names.plural".into(), "Required value".into()));
    }
    if kind.is_empty() {
        errs.push(("spec.names.kind".into(), "Required value".into()));
    }
    if name != format!("{plural}.{group}") {
        errs.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if scope != "Namespaced" && scope != "Cluster" {
        errs.push((
            "spec.scope".into(),
            format!("Unsupported value: {scope:?}: supported values: \"Cluster\", \"Namespaced\""),
        ));
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        errs.push((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    let served: Vec<&Value> = versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool) == Some(true))
        .collect();
    for (i, v) in versions.iter().enumerate() {
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            errs.push((
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "Required value: schemas are required".into(),
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let status = served
        .first()
        .and_then(|v| v.pointer("/subresources/status"))
        .is_some();
    let printer_columns = served
        .first()
        .and_then(|v| v.get("additionalPrinterColumns"))
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .map(|c| PrinterColumn {
                    name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
                    type_: c
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("string")
                        .into(),
                    json_path: c
                        .get("jsonPath")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    let singular = {
        let s = s("/names/singular");
        if s.is_empty() { kind.to_lowercase() } else { s }
    };
    Ok(ResourceInfo {
        group,
        versions: served
            .iter()
            .filter_map(|v| v.get("name").and_then(Value::as_str))
            .map(str::to_string)
            .collect(),
        plural,
        singular,
        kind,
        namespaced: scope == "Namespaced",
        status,
        short_names: str_list(spec.pointer("/names/shortNames")),
        categories: str_list(spec.pointer("/names/categories")),
        create_on_update: false,
        generation: true,
        custom: true,
        reset_status_on_create: status,
        field_selectors: Vec::new(),
        printer_columns,
        schemas: served
            .iter()
            .filter_map(|v| {
                Some((
                    v.get("name")?.as_str()?.to_string(),
                    v.pointer("/schema/openAPIV3Schema")?.clone(),
                ))
            })
            .collect(),
    })
}
