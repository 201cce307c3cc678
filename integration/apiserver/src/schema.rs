//! Object decoding the way kube-apiserver does it: built-in kinds are
//! round-tripped through their k8s-openapi types (type errors become 400,
//! unknown fields are dropped, times are normalised), custom resources are
//! pruned and type-checked against the CRD's structural `openAPIV3Schema`
//! (type, properties, items, additionalProperties, required, enum,
//! nullable, minimum/maximum, minLength/maxLength, minItems/maxItems,
//! x-kubernetes-preserve-unknown-fields, x-kubernetes-int-or-string).
//! Not covered: CEL rules, formats, patterns, defaults.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value, kind: &str) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone())
        .map_err(|e| format!("{kind} in version \"v1\" cannot be handled as a {kind}: {e}"))?;
    serde_json::to_value(typed).map_err(|e| format!("encoding {kind}: {e}"))
}

/// Paths present (non-null) in `input` but absent from `output`.
fn dropped_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(ov) => dropped_fields(v, ov, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                dropped_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes a built-in kind. Returns the normalised object and the unknown
/// fields that were dropped; `Err` is a decode error (400 BadRequest).
pub fn decode_builtin(
    group: &str,
    plural: &str,
    v: &Value,
) -> Result<(Value, Vec<String>), String> {
    use k8s_openapi::api::{apps, coordination, core, discovery, events, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
    let out = match (group, plural) {
        ("", "services") => roundtrip::<core::v1::Service>(v, "Service")?,
        ("", "nodes") => roundtrip::<core::v1::Node>(v, "Node")?,
        ("", "pods") => roundtrip::<core::v1::Pod>(v, "Pod")?,
        ("", "namespaces") => roundtrip::<core::v1::Namespace>(v, "Namespace")?,
        ("", "events") => roundtrip::<core::v1::Event>(v, "Event")?,
        ("", "configmaps") => roundtrip::<core::v1::ConfigMap>(v, "ConfigMap")?,
        ("discovery.k8s.io", "endpointslices") => {
            roundtrip::<discovery::v1::EndpointSlice>(v, "EndpointSlice")?
        }
        ("coordination.k8s.io", "leases") => roundtrip::<coordination::v1::Lease>(v, "Lease")?,
        ("events.k8s.io", "events") => roundtrip::<events::v1::Event>(v, "Event")?,
        ("", "serviceaccounts") => roundtrip::<core::v1::ServiceAccount>(v, "ServiceAccount")?,
        ("apps", "daemonsets") => roundtrip::<apps::v1::DaemonSet>(v, "DaemonSet")?,
        ("rbac.authorization.k8s.io", "clusterroles") => {
            roundtrip::<rbac::v1::ClusterRole>(v, "ClusterRole")?
        }
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            roundtrip::<rbac::v1::ClusterRoleBinding>(v, "ClusterRoleBinding")?
        }
        ("rbac.authorization.k8s.io", "roles") => roundtrip::<rbac::v1::Role>(v, "Role")?,
        ("rbac.authorization.k8s.io", "rolebindings") => {
            roundtrip::<rbac::v1::RoleBinding>(v, "RoleBinding")?
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            roundtrip::<apiextensions::v1::CustomResourceDefinition>(v, "CustomResourceDefinition")?
        }
        _ => v.clone(),
    };
    let mut dropped = Vec::new();
    dropped_fields(v, &out, "", &mut dropped);
    Ok((out, dropped))
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

fn arr<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The part of kube-apiserver's validation of built-in kinds that this
/// project's objects run into: Service types, ports, external IPs,
/// externalTrafficPolicy, load-balancer ingress IPs; EndpointSlice address
/// types; Pod containers; Lease durations. `(field, message)` pairs for a
/// 422 Invalid.
pub fn validate_builtin(group: &str, plural: &str, obj: &Value) -> Vec<(String, String)> {
    let mut errs: Vec<(String, String)> = Vec::new();
    let str_at = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("");
    match (group, plural) {
        ("", "services") => {
            let ty = str_at("/spec/type");
            if !matches!(
                ty,
                "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
            ) {
                errs.push(("spec.type".into(), format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"")));
            }
            let ports = arr(obj, "/spec/ports");
            if ports.is_empty() && ty != "ExternalName" && str_at("/spec/clusterIP") != "None" {
                errs.push(("spec.ports".into(), "Required value".into()));
            }
            for (i, p) in ports.iter().enumerate() {
                let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    errs.push((
                        format!("spec.ports[{i}].port"),
                        format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
                    ));
                }
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                if !matches!(proto, "TCP" | "UDP" | "SCTP") {
                    errs.push((format!("spec.ports[{i}].protocol"), format!("Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\"")));
                }
                if ports.len() > 1
                    && p.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .is_empty()
                {
                    errs.push((format!("spec.ports[{i}].name"), "Required value".into()));
                }
            }
            let external_ips = arr(obj, "/spec/externalIPs");
            for (i, ip) in external_ips.iter().enumerate() {
                let ip = ip.as_str().unwrap_or("");
                if !is_ip(ip) {
                    errs.push((
                        format!("spec.externalIPs[{i}]"),
                        format!("Invalid value: {ip:?}: must be a valid IP address"),
                    ));
                }
            }
            let accessible = matches!(ty, "LoadBalancer" | "NodePort")
                || (ty == "ClusterIP" && !external_ips.is_empty());
            let etp = str_at("/spec/externalTrafficPolicy");
            if !etp.is_empty() {
                if !accessible {
                    errs.push(("spec.externalTrafficPolicy".into(), format!("Invalid value: {etp:?}: may only be set for externally-accessible services")));
                } else if !matches!(etp, "Cluster" | "Local") {
                    errs.push((
                        "spec.externalTrafficPolicy".into(),
                        format!(
                            "Unsupported value: {etp:?}: supported values: \"Cluster\", \"Local\""
                        ),
                    ));
                }
            }
            for (i, ing) in arr(obj, "/status/loadBalancer/ingress").iter().enumerate() {
                if let Some(ip) = ing.get("ip").and_then(Value::as_str)
                    && !is_ip(ip)
                {
                    errs.push((
                        format!("status.loadBalancer.ingress[{i}].ip"),
                        format!("Invalid value: {ip:?}: must be a valid IP address"),
                    ));
                }
            }
        }
        ("discovery.k8s.io", "endpointslices") => {
            let at = str_at("/addressType");
            if at.is_empty() {
                errs.push(("addressType".into(), "Required value".into()));
            } else if !matches!(at, "IPv4" | "IPv6" | "FQDN") {
                errs.push((
                    "addressType".into(),
                    format!(
                        "Unsupported value: {at:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\""
                    ),
                ));
            }
            for (i, e) in arr(obj, "/endpoints").iter().enumerate() {
                let addrs = e
                    .get("addresses")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                if !(1..=100).contains(&addrs) {
                    errs.push((
                        format!("endpoints[{i}].addresses"),
                        "Required value: must contain at least 1 address".into(),
                    ));
                }
            }
        }
        ("", "pods") if arr(obj, "/spec/containers").is_empty() => {
            errs.push(("spec.containers".into(), "Required value".into()));
        }
        ("coordination.k8s.io", "leases") => {
            if let Some(d) = obj
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_i64)
                && d <= 0
            {
                errs.push((
                    "spec.leaseDurationSeconds".into(),
                    format!("Invalid value: {d}: must be greater than 0"),
                ));
            }
            if let Some(t) = obj
                .pointer("/spec/leaseTransitions")
                .and_then(Value::as_i64)
                && t < 0
            {
                errs.push((
                    "spec.leaseTransitions".into(),
                    format!("Invalid value: {t}: must be greater than or equal to 0"),
                ));
            }
        }
        _ => {}
    }
    errs
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Result of checking a custom resource against its schema.
#[derive(Debug, Default)]
pub struct SchemaOutcome {
    /// Unknown fields that were pruned.
    pub pruned: Vec<String>,
    /// `(field, message)` validation errors, for a 422 Invalid.
    pub errors: Vec<(String, String)>,
}

/// Prunes and validates `obj` (a whole custom resource) in place.
/// `apiVersion`, `kind` and `metadata` are never pruned.
pub fn check_custom(obj: &mut Value, schema: &Value) -> SchemaOutcome {
    let mut out = SchemaOutcome::default();
    if let Value::Object(m) = obj {
        let props = schema.get("properties");
        let keys: Vec<String> = m.keys().cloned().collect();
        for k in keys {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.and_then(|p| p.get(&k)) {
                Some(sub) => {
                    if let Some(v) = m.get_mut(&k) {
                        if v.is_null() && sub.get("nullable").and_then(Value::as_bool) != Some(true)
                        {
                            m.remove(&k);
                            continue;
                        }
                        check(v, sub, &k, &mut out);
                    }
                }
                None if schema
                    .get("x-kubernetes-preserve-unknown-fields")
                    .and_then(Value::as_bool)
                    == Some(true) => {}
                None => {
                    m.remove(&k);
                    out.pruned.push(k);
                }
            }
        }
        required(m, schema, "", &mut out);
    }
    out
}

fn required(
    m: &serde_json::Map<String, Value>,
    schema: &Value,
    path: &str,
    out: &mut SchemaOutcome,
) {
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !m.contains_key(r) {
                let p = if path.is_empty() {
                    r.to_string()
                } else {
                    format!("{path}.{r}")
                };
                out.errors.push((p, "Required value".into()));
            }
        }
    }
}

fn check(v: &mut Value, schema: &Value, path: &str, out: &mut SchemaOutcome) {
    let bool_of = |k: &str| schema.get(k).and_then(Value::as_bool) == Some(true);
    if v.is_null() {
        if !bool_of("nullable") {
            out.errors.push((
                path.into(),
                format!(
                    "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    schema
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("object")
                ),
            ));
        }
        return;
    }
    if bool_of("x-kubernetes-int-or-string") {
        if !matches!(type_name(v), "integer" | "string") {
            out.errors.push((
                path.into(),
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type integer,string: \"{}\"",
                    type_name(v),
                    type_name(v)
                ),
            ));
        }
        return;
    }
    let want = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let have = type_name(v);
    let type_ok = match want {
        "" => true,
        "number" => matches!(have, "number" | "integer"),
        w => w == have,
    };
    if !type_ok {
        out.errors.push((
            path.into(),
            format!("Invalid value: \"{have}\": {path} in body must be of type {want}: \"{have}\""),
        ));
        return;
    }
    if let Some(en) = schema.get("enum").and_then(Value::as_array)
        && !en.contains(v)
    {
        let allowed: Vec<String> = en.iter().map(|e| e.to_string()).collect();
        out.errors.push((
            path.into(),
            format!(
                "Unsupported value: {v}: supported values: {}",
                allowed.join(", ")
            ),
        ));
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = num("minimum").filter(|m| x < *m) {
                out.errors.push((path.into(), format!("Invalid value: {n}: {path} in body should be greater than or equal to {min}")));
            }
            if let Some(max) = num("maximum").filter(|m| x > *m) {
                out.errors.push((
                    path.into(),
                    format!(
                        "Invalid value: {n}: {path} in body should be less than or equal to {max}"
                    ),
                ));
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as f64;
            if let Some(min) = num("minLength").filter(|m| len < *m) {
                out.errors.push((
                    path.into(),
                    format!(
                        "Invalid value: {s:?}: {path} in body should be at least {min} chars long"
                    ),
                ));
            }
            if let Some(max) = num("maxLength").filter(|m| len > *m) {
                out.errors.push((
                    path.into(),
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
        }
        Value::Array(a) => {
            let len = a.len() as f64;
            if let Some(min) = num("minItems").filter(|m| len < *m) {
                out.errors.push((
                    path.into(),
                    format!(
                        "Invalid value: {len}: {path} in body should have at least {min} items"
                    ),
                ));
            }
            if let Some(max) = num("maxItems").filter(|m| len > *m) {
                out.errors.push((
                    path.into(),
                    format!("Too many: {len}: must have at most {max} items"),
                ));
            }
            if let Some(items) = schema.get("items") {
                for (i, item) in a.iter_mut().enumerate() {
                    check(item, items, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(m) => {
            let preserve = bool_of("x-kubernetes-preserve-unknown-fields");
            let props = schema.get("properties");
            let additional = schema.get("additionalProperties");
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let p = format!("{path}.{k}");
                let sub = props
                    .and_then(|pr| pr.get(&k))
                    .or(additional.filter(|a| a.is_object()));
                match sub {
                    Some(sub) => {
                        let remove = m.get(&k).is_some_and(Value::is_null)
                            && sub.get("nullable").and_then(Value::as_bool) != Some(true);
                        if remove {
                            m.remove(&k);
                        } else if let Some(val) = m.get_mut(&k) {
                            check(val, sub, &p, out);
                        }
                    }
                    None if preserve || additional == Some(&Value::Bool(true)) => {}
                    None if props.is_none() && want.is_empty() => {}
                    None => {
                        m.remove(&k);
                        out.pruned.push(p);
                    }
                }
            }
            required(m, schema, path, out);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_validation() {
        let svc = |spec: Value| json!({"spec": spec});
        let fields = |v: Vec<(String, String)>| v.into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert!(validate_builtin("", "services", &svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}], "externalTrafficPolicy": "Local"}))).is_empty());
        assert_eq!(
            fields(validate_builtin(
                "",
                "services",
                &svc(json!({"type": "ClusterIP"}))
            )),
            vec!["spec.ports"]
        );
        assert_eq!(
            fields(validate_builtin(
                "",
                "services",
                &svc(
                    json!({"type": "ClusterIP", "ports": [{"port": 80}], "externalTrafficPolicy": "Local"})
                )
            )),
            vec!["spec.externalTrafficPolicy"]
        );
        assert!(validate_builtin("", "services", &svc(json!({"type": "ClusterIP", "ports": [{"port": 80}], "externalIPs": ["198.51.100.1"], "externalTrafficPolicy": "Local"}))).is_empty());
        assert_eq!(
            fields(validate_builtin(
                "",
                "services",
                &svc(
                    json!({"type": "ClusterIP", "ports": [{"port": 0}, {"port": 81, "name": "b"}], "externalIPs": ["nope"]})
                )
            )),
            vec![
                "spec.ports[0].port",
                "spec.ports[0].name",
                "spec.externalIPs[0]"
            ]
        );
        assert_eq!(
            fields(validate_builtin(
                "discovery.k8s.io",
                "endpointslices",
                &json!({"endpoints": []})
            )),
            vec!["addressType"]
        );
        assert_eq!(
            fields(validate_builtin(
                "coordination.k8s.io",
                "leases",
                &json!({"spec": {"leaseDurationSeconds": 0}})
            )),
            vec!["spec.leaseDurationSeconds"]
        );
    }

    fn policy_schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "interfaces": {"type": "array", "items": {"type": "string"}},
                "externalIPs": {"type": "boolean"},
                "sel": {"type": "object", "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}}
            }},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }})
    }

    #[test]
    fn prunes_unknown_and_checks_types() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"interfaces": ["eth0"], "externalIPs": true, "bogus": 1, "sel": {"matchLabels": {"a": "b"}}},
            "extra": {}, "status": {"anything": 1}});
        let r = check_custom(&mut o, &policy_schema());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(
            r.pruned,
            vec!["extra".to_string(), "spec.bogus".to_string()]
        );
        assert!(o.pointer("/spec/bogus").is_none());
        assert_eq!(o.pointer("/status/anything"), Some(&json!(1)));

        let mut bad = json!({"spec": {"interfaces": [1], "externalIPs": "yes"}});
        let r = check_custom(&mut bad, &policy_schema());
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert_eq!(r.errors[0].0, "spec.externalIPs");
    }

    #[test]
    fn builtin_roundtrip_drops_unknown_and_rejects_bad_types() {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l"}, "spec": {"holderIdentity": "n1", "bogus": 1,
            "renewTime": "2024-01-01T00:00:00Z"}});
        let (out, dropped) = decode_builtin("coordination.k8s.io", "leases", &lease).unwrap();
        assert_eq!(dropped, vec!["spec.bogus".to_string()]);
        assert_eq!(
            out.pointer("/spec/renewTime"),
            Some(&json!("2024-01-01T00:00:00.000000Z"))
        );
        let bad = json!({"spec": {"leaseDurationSeconds": "x"}});
        assert!(decode_builtin("coordination.k8s.io", "leases", &bad).is_err());
    }
}
