//! events.k8s.io/v1 Events seen through core/v1.
//!
//! kube-apiserver keeps one storage for both Event APIs and converts between
//! them, so an event an agent writes through events.k8s.io/v1 is what
//! `kubectl describe` finds through core/v1 (by `involvedObject.uid` and
//! friends). This server keeps one store per resource, so every write of an
//! events.k8s.io/v1 Event is mirrored into core/v1 Events, converted field
//! by field as the apiserver's conversion does. The mirror has its own
//! resourceVersion and uid; core/v1 writes are not mirrored back.

use serde_json::{Map, Value, json};

use crate::resources::ResourceInfo;
use crate::status::ApiStatus;
use crate::store::{Store, WriteTarget};

/// Whether `res` is events.k8s.io's Events.
pub fn is_events_v1(res: &ResourceInfo) -> bool {
    res.group == "events.k8s.io" && res.plural == "events"
}

/// The core/v1 form of an events.k8s.io/v1 Event.
pub fn to_core(event: &Value) -> Value {
    let mut meta = Map::new();
    for key in ["name", "namespace", "labels", "annotations"] {
        if let Some(v) = event.pointer(&format!("/metadata/{key}")) {
            meta.insert(key.to_string(), v.clone());
        }
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    out.insert("metadata".into(), Value::Object(meta));
    let renames = [
        ("regarding", "involvedObject"),
        ("related", "related"),
        ("reason", "reason"),
        ("note", "message"),
        ("type", "type"),
        ("action", "action"),
        ("eventTime", "eventTime"),
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
        ("deprecatedSource", "source"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("series", "series"),
    ];
    for (from, to) in renames {
        if let Some(v) = event.get(from).filter(|v| !v.is_null()) {
            out.insert(to.to_string(), v.clone());
        }
    }
    // core/v1 requires an involvedObject; describe reads the component
    // from source when it is set.
    out.entry("involvedObject").or_insert_with(|| json!({}));
    if !out.contains_key("source")
        && let Some(c) = event.get("reportingController").and_then(Value::as_str)
    {
        out.insert("source".into(), json!({"component": c}));
    }
    Value::Object(out)
}

/// Mirrors the events.k8s.io/v1 Event `ns/name` as it now stands (`None`:
/// deleted) into core/v1 Events.
pub fn mirror(
    store: &mut Store,
    ns: &str,
    name: &str,
    now: Option<&Value>,
) -> Result<(), ApiStatus> {
    let Some(core) = store.resource("", "events") else {
        return Ok(());
    };
    match now {
        Some(event) => {
            let converted = to_core(event);
            store.update_with(&core, ns, name, WriteTarget::Main, false, |_| Ok(converted))?;
        }
        None => match store.delete(&core, ns, name, None, None) {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_as_the_apiserver_does() {
        let event = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default", "resourceVersion": "7", "uid": "u"},
            "eventTime": "2026-11-29T20:00:00.000000Z",
            "regarding": {"apiVersion": "v1", "kind": "Service", "namespace": "default", "name": "web", "uid": "svc-uid"},
            "reason": "L2AnnouncementStarted", "note": "node n1 announces 192.0.2.10 on eth0",
            "type": "Normal", "action": "Announce",
            "reportingController": "l2announcer", "reportingInstance": "n1",
            "series": {"count": 2, "lastObservedTime": "2026-11-29T20:00:05.000000Z"}
        });
        let core = to_core(&event);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(
            core["metadata"],
            json!({"name": "web.1", "namespace": "default"})
        );
        assert_eq!(core["involvedObject"]["uid"], "svc-uid");
        assert_eq!(core["message"], "node n1 announces 192.0.2.10 on eth0");
        assert_eq!(core["reason"], "L2AnnouncementStarted");
        assert_eq!(core["reportingComponent"], "l2announcer");
        assert_eq!(core["source"], json!({"component": "l2announcer"}));
        assert_eq!(core["series"]["count"], 2);
        assert!(core.get("note").is_none() && core.get("regarding").is_none());
    }
}
