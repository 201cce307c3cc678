//! What deploy/'s ClusterRole and Role grant, checked against the API
//! server's request log: every request an agent made must be allowed (a
//! Role's rules only in its namespace), and every grant should be used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::apiserver::RequestRecord;

/// (API group, resource or resource/subresource, verb).
pub type Rule = (String, String, String);

/// The rules of deploy/clusterrole.yaml (everywhere) and deploy/role.yaml
/// (in its namespace).
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub cluster: BTreeSet<Rule>,
    /// Namespace -> rules.
    pub namespaced: BTreeMap<String, BTreeSet<Rule>>,
}

fn rules_of(role: &serde_yaml::Value) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().into_iter().flatten() {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        for g in list("apiGroups") {
            for r in list("resources") {
                for v in list("verbs") {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

impl Grants {
    /// Reads the roles in the repository's deploy/.
    pub fn deploy() -> Grants {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let read = |file: &str| -> serde_yaml::Value {
            let text = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("reading deploy/{file}: {e}"));
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
        };
        let cluster = read("clusterrole.yaml");
        let role = read("role.yaml");
        let ns = role["metadata"]["namespace"]
            .as_str()
            .expect("the Role has a namespace")
            .to_string();
        Grants {
            cluster: rules_of(&cluster),
            namespaced: [(ns, rules_of(&role))].into(),
        }
    }

    /// Every rule, wherever it applies.
    pub fn all(&self) -> BTreeSet<Rule> {
        let mut out = self.cluster.clone();
        for rules in self.namespaced.values() {
            out.extend(rules.iter().cloned());
        }
        out
    }

    /// Whether the roles allow this request.
    pub fn allows(&self, r: &RequestRecord) -> bool {
        let rule = rule_of(r);
        self.cluster.contains(&rule)
            || self
                .namespaced
                .get(&r.namespace)
                .is_some_and(|rules| rules.contains(&rule))
    }

    /// The successful requests of user agents starting with
    /// `l2announcer/` that the roles do not allow, described.
    pub fn denied(&self, log: &[RequestRecord]) -> Vec<String> {
        agent_requests(log)
            .filter(|r| !self.allows(r))
            .map(|r| format!("{} {} ns={:?} ({})", r.method, r.path, r.namespace, r.verb))
            .collect()
    }
}

/// The rule a request needs.
pub fn rule_of(r: &RequestRecord) -> Rule {
    let resource = if r.subresource.is_empty() {
        r.resource.clone()
    } else {
        format!("{}/{}", r.resource, r.subresource)
    };
    (r.group.clone(), resource, r.verb.clone())
}

/// The agents' answered resource requests (discovery and the like aside).
pub fn agent_requests(log: &[RequestRecord]) -> impl Iterator<Item = &RequestRecord> {
    log.iter().filter(|r| {
        r.user_agent.starts_with("l2announcer/") && r.code < 400 && !r.resource.is_empty()
    })
}

/// The rules the agents' requests used.
pub fn used(log: &[RequestRecord]) -> BTreeSet<Rule> {
    agent_requests(log).map(rule_of).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(verb: &str, group: &str, resource: &str, ns: &str) -> RequestRecord {
        RequestRecord {
            time_ms: 0,
            user_agent: "l2announcer/0.1.0 (node-a)".into(),
            source: String::new(),
            method: "GET".into(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: ns.into(),
            name: String::new(),
            path: format!("/{resource}"),
            query: String::new(),
            code: 200,
            latency_us: 0,
        }
    }

    #[test]
    fn role_rules_apply_only_in_their_namespace() {
        let g = Grants::deploy();
        let lease = |ns| record("update", "coordination.k8s.io", "leases", ns);
        assert!(g.allows(&lease("kube-system")));
        assert!(!g.allows(&lease("default")));
        assert!(g.allows(&record("watch", "", "services", "")));
        assert!(!g.allows(&record("delete", "", "services", "default")));
        assert_eq!(g.denied(&[lease("default"), lease("kube-system")]).len(), 1);
    }
}
