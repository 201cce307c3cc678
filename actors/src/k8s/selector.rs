//! Kubernetes label selectors: compiling a `LabelSelector` (matchLabels and
//! matchExpressions) into requirements, with the validation and the error
//! texts of apimachinery's `LabelSelectorAsSelector`, and matching label sets.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a selector was refused; the text is what Kubernetes would say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

/// A requirement's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One compiled requirement: `key op values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A compiled selector; the empty one selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Selects every label set (an absent selector in a policy).
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Compiles `selector`; `None` selects everything.
    pub fn compile(selector: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        let Some(selector) = selector else {
            return Ok(Selector::everything());
        };
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            validate_key(key)?;
            validate_value(value)?;
            requirements.push(Requirement {
                key: key.clone(),
                operator: Operator::In,
                values: BTreeSet::from([value.clone()]),
            });
        }
        for expr in selector.match_expressions.iter().flatten() {
            validate_key(&expr.key)?;
            let operator = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            };
            let values: Vec<String> = expr.values.clone().unwrap_or_default();
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err(SelectorError(
                        "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
                            .to_string(),
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err(SelectorError(format!(
                        "values: Invalid value: []string{{{}}}: values set must be empty for exists and does not exist",
                        values
                            .iter()
                            .map(|v| format!("{v:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                _ => {}
            }
            for v in &values {
                validate_value(v)?;
            }
            requirements.push(Requirement {
                key: expr.key.clone(),
                operator,
                values: values.into_iter().collect(),
            });
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Selector { requirements })
    }

    /// Whether every requirement holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// A qualified name part: 1-63 chars, alphanumeric at both ends.
fn valid_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(is_name_char)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A DNS-1123 subdomain: lower-case labels joined by dots, at most 253.
fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn validate_key(key: &str) -> Result<(), SelectorError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(valid_dns_subdomain);
    if !prefix_ok || !valid_name_part(name) {
        return Err(SelectorError(format!(
            "key: Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (with an optional DNS subdomain prefix and '/')"
        )));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), SelectorError> {
    if value.is_empty() || valid_name_part(value) {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "values[0]: Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn selector(
        match_labels: &[(&str, &str)],
        exprs: Vec<LabelSelectorRequirement>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn absent_and_empty_select_everything() {
        assert!(Selector::compile(None).expect("ok").matches(&labels(&[])));
        let empty = LabelSelector::default();
        assert!(Selector::compile(Some(&empty)).expect("ok").is_everything());
    }

    #[test]
    fn operators_match_like_kubernetes() {
        let s = Selector::compile(Some(&selector(
            &[("color", "blue")],
            vec![
                expr("tier", "In", Some(&["web", "api"])),
                expr("env", "NotIn", Some(&["dev"])),
                expr("team", "Exists", None),
                expr(
                    "node-role.kubernetes.io/control-plane",
                    "DoesNotExist",
                    None,
                ),
            ],
        )))
        .expect("valid");
        let base = [("color", "blue"), ("tier", "web"), ("team", "a")];
        assert!(s.matches(&labels(&base)));
        // NotIn is satisfied by an absent key, refused by a listed value.
        let mut l = labels(&base);
        l.insert("env".into(), "dev".into());
        assert!(!s.matches(&l));
        l.insert("env".into(), "prod".into());
        assert!(s.matches(&l));
        l.insert("node-role.kubernetes.io/control-plane".into(), "".into());
        assert!(!s.matches(&l));
        assert!(!s.matches(&labels(&[("color", "red"), ("tier", "web"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("color", "blue"), ("tier", "db"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("color", "blue"), ("tier", "web")])));
    }

    #[test]
    fn invalid_selectors_get_kubernetes_messages() {
        let e = Selector::compile(Some(&selector(&[], vec![expr("something", "NotIn", None)])))
            .expect_err("empty NotIn");
        assert_eq!(
            e.0,
            "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
        );
        let e = Selector::compile(Some(&selector(
            &[],
            vec![expr("a", "Exists", Some(&["x"]))],
        )))
        .expect_err("Exists with values");
        assert!(e.0.contains("values set must be empty"), "{e}");
        let e = Selector::compile(Some(&selector(&[], vec![expr("a", "Like", Some(&["x"]))])))
            .expect_err("operator");
        assert!(e.0.contains("not a valid label selector operator"), "{e}");
        let e = Selector::compile(Some(&selector(&[("bad key!", "x")], vec![]))).expect_err("key");
        assert!(e.0.starts_with("key: Invalid value"), "{e}");
        let e = Selector::compile(Some(&selector(&[("k", "-bad")], vec![]))).expect_err("value");
        assert!(e.0.contains("a valid label"), "{e}");
        assert!(Selector::compile(Some(&selector(&[("example.com/k", "")], vec![]))).is_ok());
    }
}
