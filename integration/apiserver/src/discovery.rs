//! Discovery documents (legacy `/api`, `/apis` and the aggregated
//! `apidiscovery.k8s.io/v2` / `v2beta1` form), `/version`, and the output
//! forms clients ask for with `Accept`: plain objects, `Table` (kubectl get)
//! and `PartialObjectMetadata`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::resources::ResourceInfo;

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The Kubernetes version the server claims to be.
pub fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn groups(resources: &[ResourceInfo]) -> BTreeMap<String, Vec<&ResourceInfo>> {
    let mut g: BTreeMap<String, Vec<&ResourceInfo>> = BTreeMap::new();
    for r in resources {
        g.entry(r.group.clone()).or_default().push(r);
    }
    g
}

fn versions_of(rs: &[&ResourceInfo]) -> Vec<String> {
    let mut vs: Vec<String> = Vec::new();
    for r in rs {
        for v in &r.versions {
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    vs
}

/// `GET /api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

/// `GET /apis`.
pub fn api_group_list(resources: &[ResourceInfo]) -> Value {
    let groups: Vec<Value> = groups(resources)
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, rs)| api_group(g, rs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>` body (also an item of `/apis`).
pub fn api_group(group: &str, rs: &[&ResourceInfo]) -> Value {
    let versions: Vec<Value> = versions_of(rs)
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(json!({}));
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions, "preferredVersion": preferred})
}

pub fn group_resources<'a>(resources: &'a [ResourceInfo], group: &str) -> Vec<&'a ResourceInfo> {
    resources.iter().filter(|r| r.group == group).collect()
}

/// `GET /api/v1`, `GET /apis/<group>/<version>`.
pub fn api_resource_list(resources: &[ResourceInfo], group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&ResourceInfo> = resources
        .iter()
        .filter(|r| r.group == group && r.versions.iter().any(|v| v == version))
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in rs {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        list.push(e);
        if r.status {
            list.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

/// Aggregated discovery for the core group (`/api`) or all named groups
/// (`/apis`), as `apidiscovery.k8s.io/<api_version>` APIGroupDiscoveryList.
pub fn aggregated(resources: &[ResourceInfo], core: bool, api_version: &str) -> Value {
    let items: Vec<Value> = groups(resources)
        .iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, rs)| {
            let versions: Vec<Value> = versions_of(rs)
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = rs
                        .iter()
                        .filter(|r| r.versions.contains(v))
                        .map(|r| {
                            let kind = json!({"group": g, "version": v, "kind": r.kind});
                            let mut e = json!({
                                "resource": r.plural,
                                "responseKind": kind,
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular,
                                "verbs": VERBS,
                            });
                            if !r.short_names.is_empty() {
                                e["shortNames"] = json!(r.short_names);
                            }
                            if !r.categories.is_empty() {
                                e["categories"] = json!(r.categories);
                            }
                            if r.status {
                                e["subresources"] = json!([{
                                    "subresource": "status",
                                    "responseKind": kind,
                                    "verbs": ["get", "patch", "update"],
                                }]);
                            }
                            e
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{api_version}"),
        "metadata": {},
        "items": items,
    })
}

/// Path of a group-version in the OpenAPI v3 index: `api/v1`, `apis/g/v`.
fn openapi_gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `GET /openapi/v3`: the index of per-group-version documents.
pub fn openapi_v3_index(resources: &[ResourceInfo]) -> Value {
    let mut paths = serde_json::Map::new();
    for r in resources {
        for v in &r.versions {
            let p = openapi_gv_path(&r.group, v);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", r.kind.len() + p.len())}),
            );
        }
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/<gv path>`: a minimal OpenAPI 3 document listing each
/// resource's operations with `x-kubernetes-group-version-kind` and the
/// write parameters (dryRun, fieldManager, fieldValidation, force). That is
/// what kubectl reads to learn that the server validates fields itself.
/// Component schemas are left out (so `kubectl explain` does not work).
pub fn openapi_v3_doc(resources: &[ResourceInfo], gv_path: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for r in resources {
        for v in &r.versions {
            if openapi_gv_path(&r.group, v) != gv_path {
                continue;
            }
            let gvk = json!({"group": r.group, "version": v, "kind": r.kind});
            let param = |n: &str| json!({"name": n, "in": "query", "schema": {"type": "string"}, "uniqueItems": true});
            let write_params = json!([
                param("dryRun"),
                param("fieldManager"),
                param("fieldValidation")
            ]);
            let mut patch_params = write_params.clone();
            if let Some(a) = patch_params.as_array_mut() {
                a.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean"}, "uniqueItems": true}));
            }
            let op = |id: &str, params: &Value| {
                json!({
                    "operationId": format!("{id}{}", r.kind),
                    "parameters": params,
                    "responses": {"200": {"description": "OK"}},
                    "x-kubernetes-action": id,
                    "x-kubernetes-group-version-kind": gvk,
                })
            };
            let base = format!("/{gv_path}");
            let collection = if r.namespaced {
                format!("{base}/namespaces/{{namespace}}/{}", r.plural)
            } else {
                format!("{base}/{}", r.plural)
            };
            paths.insert(
                collection.clone(),
                json!({
                    "get": op("list", &json!([])),
                    "post": op("post", &write_params),
                }),
            );
            paths.insert(
                format!("{collection}/{{name}}"),
                json!({
                    "get": op("get", &json!([])),
                    "put": op("put", &write_params),
                    "patch": op("patch", &patch_params),
                    "delete": op("delete", &json!([param("dryRun")])),
                }),
            );
        }
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// How a client wants objects rendered (from its `Accept` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputForm {
    Full,
    /// meta.k8s.io Table; `include_full` when `includeObject=Object`.
    Table {
        include_full: bool,
        v1beta1: bool,
    },
    /// meta.k8s.io PartialObjectMetadata(List).
    Metadata,
}

/// Chooses the output form from `Accept` (first acceptable entry wins).
/// `Err` when nothing acceptable is offered (406).
pub fn output_form(accept: &str, include_object: &str) -> Result<OutputForm, ()> {
    if accept.trim().is_empty() {
        return Ok(OutputForm::Full);
    }
    for entry in accept.split(',') {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let params: Vec<&str> = parts.collect();
        if !matches!(
            media,
            "application/json" | "*/*" | "application/*" | "application/yaml"
        ) {
            continue;
        }
        let as_ = params.iter().find_map(|p| p.strip_prefix("as="));
        let v = params.iter().find_map(|p| p.strip_prefix("v="));
        match as_ {
            None => return Ok(OutputForm::Full),
            Some("Table") => {
                return Ok(OutputForm::Table {
                    include_full: include_object == "Object",
                    v1beta1: v == Some("v1beta1"),
                });
            }
            Some("PartialObjectMetadata") | Some("PartialObjectMetadataList") => {
                return Ok(OutputForm::Metadata);
            }
            Some(_) => continue,
        }
    }
    Err(())
}

fn human_duration(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs.is_multiple_of(60) {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m.is_multiple_of(60) {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h.is_multiple_of(24) {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

fn age(obj: &Value) -> Value {
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match created {
        Some(c) => {
            let secs = jiff::Timestamp::now().duration_since(c).as_secs();
            json!(human_duration(u64::try_from(secs).unwrap_or(0)))
        }
        None => json!("<unknown>"),
    }
}

fn join_strs(v: Option<&Value>, f: impl Fn(&Value) -> Option<String>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(f).collect())
        .unwrap_or_default()
}

fn cell(obj: &Value, path: &str) -> Value {
    match path {
        "__external_ip" => {
            let ty = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut ips = join_strs(obj.pointer("/status/loadBalancer/ingress"), |i| {
                i.get("ip")
                    .or_else(|| i.get("hostname"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            ips.extend(join_strs(obj.pointer("/spec/externalIPs"), |i| {
                i.as_str().map(str::to_string)
            }));
            if !ips.is_empty() {
                json!(ips.join(","))
            } else if ty == "LoadBalancer" {
                json!("<pending>")
            } else {
                json!("<none>")
            }
        }
        "__ports" => {
            let ports = join_strs(obj.pointer("/spec/ports"), |p| {
                let port = p.get("port")?.as_i64()?;
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                Some(match p.get("nodePort").and_then(Value::as_i64) {
                    Some(np) => format!("{port}:{np}/{proto}"),
                    None => format!("{port}/{proto}"),
                })
            });
            json!(if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            })
        }
        "__node_ready" => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                })
                .and_then(|c| c.get("status").and_then(Value::as_str));
            json!(match ready {
                Some("True") => "Ready",
                _ => "NotReady",
            })
        }
        "__involved" => {
            let kind = obj
                .pointer("/involvedObject/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = obj
                .pointer("/involvedObject/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            json!(format!("{}/{name}", kind.to_lowercase()))
        }
        "__data_count" => json!(
            obj.get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
        ),
        p => {
            let pointer = p.trim_start_matches('.').replace('.', "/");
            obj.pointer(&format!("/{pointer}"))
                .cloned()
                .unwrap_or(Value::Null)
        }
    }
}

fn column_definitions(res: &ResourceInfo) -> Vec<Value> {
    let mut cols = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    for c in &res.printer_columns {
        let (type_, format) = if c.type_ == "date" || c.type_ == "timestamp" {
            ("string", "date")
        } else {
            (c.type_.as_str(), "")
        };
        cols.push(json!({"name": c.name, "type": type_, "format": format, "description": "", "priority": c.priority}));
    }
    if !res
        .printer_columns
        .iter()
        .any(|c| c.type_ == "date" || c.type_ == "timestamp")
    {
        cols.push(json!({"name": "Age", "type": "string", "format": "",
            "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}));
    }
    cols
}

pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

fn row(res: &ResourceInfo, obj: &Value, include_full: bool) -> Value {
    let mut cells = vec![
        obj.pointer("/metadata/name")
            .cloned()
            .unwrap_or(Value::Null),
    ];
    for c in &res.printer_columns {
        if c.type_ == "date" {
            cells.push(age(obj));
        } else {
            cells.push(cell(obj, &c.json_path));
        }
    }
    if !res
        .printer_columns
        .iter()
        .any(|c| c.type_ == "date" || c.type_ == "timestamp")
    {
        cells.push(age(obj));
    }
    let object = if include_full {
        obj.clone()
    } else {
        partial_metadata(obj)
    };
    json!({"cells": cells, "object": object})
}

/// A meta.k8s.io Table of `objs`.
pub fn table(
    res: &ResourceInfo,
    objs: &[Value],
    include_full: bool,
    v1beta1: bool,
    list_meta: Value,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": if v1beta1 { "meta.k8s.io/v1beta1" } else { "meta.k8s.io/v1" },
        "metadata": list_meta,
        "columnDefinitions": column_definitions(res),
        "rows": objs.iter().map(|o| row(res, o, include_full)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            output_form(kubectl_get, ""),
            Ok(OutputForm::Table {
                include_full: false,
                v1beta1: false
            })
        );
        assert_eq!(output_form("application/json", ""), Ok(OutputForm::Full));
        assert_eq!(output_form("", ""), Ok(OutputForm::Full));
        assert_eq!(
            output_form(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                ""
            ),
            Ok(OutputForm::Metadata)
        );
        assert_eq!(
            output_form("application/vnd.kubernetes.protobuf", ""),
            Err(())
        );
        assert_eq!(
            output_form("application/vnd.kubernetes.protobuf,application/json", ""),
            Ok(OutputForm::Full)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(376), "6m16s");
        assert_eq!(human_duration(1200), "20m");
        assert_eq!(human_duration(3 * 86_400), "3d");
    }
}
