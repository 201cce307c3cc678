//! Patch application: JSON merge patch (RFC 7386) and JSON patch (RFC 6902)
//! through the `json-patch` crate, and strategic merge patch reduced to a
//! merge patch (directives such as `$setElementOrder/...`, `$retainKeys` and
//! `$patch` are dropped; lists are replaced, not merged by key — enough for
//! the kinds this server is used with).

use serde_json::Value;

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch)
}

/// A strategic merge patch, as a merge patch without its directives.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let mut patch = patch.clone();
    strip_strategic_directives(&mut patch);
    json_patch::merge(target, &patch)
}

/// Removes strategic-merge-patch directives (`$...` keys) recursively.
fn strip_strategic_directives(patch: &mut Value) {
    match patch {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_strategic_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_strategic_directives),
        _ => {}
    }
}

/// RFC 6902 JSON patch. All or nothing: on error `doc` is unchanged.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(doc, &ops).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(
            &mut t,
            &json!({"a": null, "b": {"c": 5}, "l": [3], "n": "x"}),
        );
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "l": [3], "n": "x"}));
    }

    #[test]
    fn strategic_directives_dropped() {
        let mut t = json!({"spec": {"ports": [{"port": 53}], "type": "ClusterIP"}});
        strategic_merge_patch(
            &mut t,
            &json!({"spec": {"$setElementOrder/ports": [{"port": 80}], "ports": [{"port": 80}]}}),
        );
        assert_eq!(
            t,
            json!({"spec": {"ports": [{"port": 80}], "type": "ClusterIP"}})
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"metadata": {"labels": {"a": "1"}}, "l": [1, 3]});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "replace", "path": "/metadata/labels/a", "value": "x"},
                {"op": "add", "path": "/l/1", "value": 2},
                {"op": "add", "path": "/l/-", "value": 4},
                {"op": "test", "path": "/l/0", "value": 1},
                {"op": "copy", "from": "/l/0", "path": "/first"},
                {"op": "move", "from": "/first", "path": "/moved"},
                {"op": "remove", "path": "/l/3"}
            ]),
        )
        .unwrap();
        let patched =
            json!({"metadata": {"labels": {"a": "x", "b/c": "2"}}, "l": [1, 2, 3], "moved": 1});
        assert_eq!(d, patched);
        for bad in [
            json!([{"op": "replace", "path": "/nope", "value": 1}]),
            json!([{"op": "remove", "path": "/moved"}, {"op": "test", "path": "/l/0", "value": 2}]),
            json!({"op": "add"}),
        ] {
            assert!(json_patch(&mut d, &bad).is_err(), "{bad} applied");
            assert_eq!(d, patched, "{bad} left a partial change");
        }
    }
}
