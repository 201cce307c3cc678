//! The agent's options: one table of specs (Cilium's key names), resolved from
//! four sources in a fixed order and validated into a typed [`Config`].
//!
//! Precedence, highest first:
//! 1. a command-line flag (`--l2-announcements-lease-duration=3s`);
//! 2. an environment variable, `L2ANNOUNCER_` + the key upper-cased with `-`
//!    turned into `_` (`L2ANNOUNCER_L2_ANNOUNCEMENTS_LEASE_DURATION=3s`);
//!    the node name also falls back to `K8S_NODE_NAME` (as Cilium's agent);
//! 3. a file named after the key in `--config-dir` (a ConfigMap mounted as a
//!    directory; keys this agent does not know, e.g. `kube-proxy-replacement`,
//!    are ignored so a Cilium ConfigMap can be mounted unchanged);
//! 4. the built-in default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use actors::devices::DeviceFilter;

use crate::duration;

/// What kind of value an option takes; decides parsing and the clap shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Duration,
    Float,
    Int,
    Text,
    List,
}

/// One option: its Cilium key, the name `config --all` prints, its default.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    pub key: &'static str,
    pub field: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub help: &'static str,
}

pub const CONFIG_DIR: &str = "config-dir";
const ENV_PREFIX: &str = "L2ANNOUNCER_";

/// Every option `run` understands, in the order `--help` lists them.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        key: "enable-l2-announcements",
        field: "EnableL2Announcements",
        kind: Kind::Bool,
        default: "false",
        help: "Announce Service IPs selected by CiliumL2AnnouncementPolicy objects",
    },
    OptionSpec {
        key: "l2-announcements-lease-duration",
        field: "L2AnnouncerLeaseDuration",
        kind: Kind::Duration,
        default: "15s",
        help: "How long a lease stays valid without renewal (> 1s and > renew deadline)",
    },
    OptionSpec {
        key: "l2-announcements-renew-deadline",
        field: "L2AnnouncerRenewDeadline",
        kind: Kind::Duration,
        default: "5s",
        help: "How long the holder keeps trying to renew before it stops announcing (> 1.2 x retry period)",
    },
    OptionSpec {
        key: "l2-announcements-retry-period",
        field: "L2AnnouncerRetryPeriod",
        kind: Kind::Duration,
        default: "2s",
        help: "Interval between renewals and between acquisition attempts",
    },
    OptionSpec {
        key: "k8s-client-qps",
        field: "K8sClientQPS",
        kind: Kind::Float,
        default: "5",
        help: "Sustained Kubernetes API requests per second (token bucket rate)",
    },
    OptionSpec {
        key: "k8s-client-burst",
        field: "K8sClientBurst",
        kind: Kind::Int,
        default: "10",
        help: "Kubernetes API request burst (token bucket size)",
    },
    OptionSpec {
        key: "devices",
        field: "Devices",
        kind: Kind::List,
        default: "",
        help: "Devices that may announce: names and prefix wildcards (eth+), comma separated; empty = all",
    },
    OptionSpec {
        key: "enable-external-ips",
        field: "EnableExternalIPs",
        kind: Kind::Bool,
        default: "false",
        help: "Allow announcing Service externalIPs",
    },
    OptionSpec {
        key: "enable-l2-pod-announcements",
        field: "EnableL2PodAnnouncements",
        kind: Kind::Bool,
        default: "false",
        help: "Send gratuitous ARP for local pod IPs",
    },
    OptionSpec {
        key: "l2-pod-announcements-interface",
        field: "L2PodAnnouncementsInterface",
        kind: Kind::Text,
        default: "",
        help: "Interface for pod announcements (required with --enable-l2-pod-announcements)",
    },
    OptionSpec {
        key: "agent-liveness-update-interval",
        field: "AgentLivenessUpdateInterval",
        kind: Kind::Duration,
        default: "1s",
        help: "How often the agent refreshes the datapath liveness stamp (< lease duration)",
    },
    OptionSpec {
        key: "l2-responder-mode",
        field: "L2ResponderMode",
        kind: Kind::Text,
        default: "tc",
        help: "Where the eBPF responder attaches: tc (TC ingress) or xdp",
    },
    OptionSpec {
        key: "l2-gratuitous-count",
        field: "L2GratuitousCount",
        kind: Kind::Int,
        default: "3",
        help: "Gratuitous ARP / unsolicited NA sent per new entry (0 disables)",
    },
    OptionSpec {
        key: "l2-gratuitous-interval",
        field: "L2GratuitousInterval",
        kind: Kind::Duration,
        default: "1s",
        help: "Interval between the gratuitous announcements of one entry",
    },
    OptionSpec {
        key: "node-name",
        field: "NodeName",
        kind: Kind::Text,
        default: "",
        help: "This node's Kubernetes name (default: $K8S_NODE_NAME, then the host name)",
    },
    OptionSpec {
        key: "k8s-namespace",
        field: "K8sNamespace",
        kind: Kind::Text,
        default: "kube-system",
        help: "Namespace of the agent and of its leases",
    },
    OptionSpec {
        key: "k8s-kubeconfig-path",
        field: "K8sKubeconfigPath",
        kind: Kind::Text,
        default: "",
        help: "Kubeconfig file (default: in-cluster service account, then $KUBECONFIG)",
    },
    OptionSpec {
        key: "state-dir",
        field: "StateDir",
        kind: Kind::Text,
        default: "/var/lib/l2announcer",
        help: "Directory of the state database",
    },
    OptionSpec {
        key: "bpf-root",
        field: "BpfRoot",
        kind: Kind::Text,
        default: "/sys/fs/bpf/l2announcer",
        help: "bpffs directory where the datapath maps are pinned",
    },
    OptionSpec {
        key: "prometheus-serve-addr",
        field: "PrometheusServeAddr",
        kind: Kind::Text,
        default: ":9972",
        help: "Address of /metrics, /healthz and /readyz (empty disables)",
    },
    OptionSpec {
        key: "api-socket",
        field: "APISocket",
        kind: Kind::Text,
        default: "/var/run/l2announcer/l2announcer.sock",
        help: "Unix socket of the local API (used by `l2announcer statedb`)",
    },
    OptionSpec {
        key: "log-format",
        field: "LogFormat",
        kind: Kind::Text,
        default: "text",
        help: "Log format: text or json",
    },
    OptionSpec {
        key: "log-level",
        field: "LogLevel",
        kind: Kind::Text,
        default: "info",
        help: "Log filter: error, warn, info, debug, trace or a tracing directive",
    },
];

/// Where an option's effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Flag,
    Env,
    ConfigDir,
    Default,
}

/// A refused option: always names the option and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid option --{option}: {message}")]
pub struct ConfigError {
    pub option: String,
    pub message: String,
}

impl ConfigError {
    fn new(option: &str, message: impl Into<String>) -> Self {
        ConfigError {
            option: option.to_string(),
            message: message.into(),
        }
    }
}

/// Where the responder attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponderMode {
    Tc,
    Xdp,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration of one agent.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub enable_l2_announcements: bool,
    #[serde(with = "go_duration")]
    pub lease_duration: Duration,
    #[serde(with = "go_duration")]
    pub renew_deadline: Duration,
    #[serde(with = "go_duration")]
    pub retry_period: Duration,
    pub k8s_client_qps: f64,
    pub k8s_client_burst: u32,
    #[serde(serialize_with = "display")]
    pub devices: DeviceFilter,
    pub enable_external_ips: bool,
    pub enable_l2_pod_announcements: bool,
    pub l2_pod_announcements_interface: String,
    #[serde(with = "go_duration")]
    pub agent_liveness_update_interval: Duration,
    pub l2_responder_mode: ResponderMode,
    pub l2_gratuitous_count: u32,
    #[serde(with = "go_duration")]
    pub l2_gratuitous_interval: Duration,
    pub node_name: String,
    pub k8s_namespace: String,
    pub k8s_kubeconfig_path: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub bpf_root: PathBuf,
    pub prometheus_serve_addr: Option<SocketAddr>,
    pub api_socket: PathBuf,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Effective value text and its source, per key, for `config --all`.
    pub effective: BTreeMap<String, EffectiveValue>,
}

/// One line of `config --all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EffectiveValue {
    pub field: String,
    pub value: String,
    pub source: String,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

mod go_duration {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::duration::format(*d))
    }
}

/// The raw inputs before resolution; tests build it by hand.
#[derive(Debug, Default, Clone)]
pub struct RawInputs {
    /// Values given as flags, by key.
    pub flags: BTreeMap<String, String>,
    /// The process environment (or a test's stand-in).
    pub env: BTreeMap<String, String>,
    /// The `--config-dir` directory, if any (itself a flag or env option).
    pub config_dir: Option<PathBuf>,
    /// Fallback node name when nothing sets it (the host name).
    pub host_name: Option<String>,
}

/// The environment variable that sets `key`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// Reads one file per known key from a mounted ConfigMap directory.
fn read_config_dir(dir: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut values = BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::new(CONFIG_DIR, format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| {
            ConfigError::new(CONFIG_DIR, format!("cannot read {}: {e}", dir.display()))
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // ConfigMap volumes hold `..data` links and hidden bookkeeping.
        if name.starts_with('.') || !OPTIONS.iter().any(|o| o.key == name) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .map_err(|e| ConfigError::new(CONFIG_DIR, format!("cannot read key {name}: {e}")))?;
        values.insert(name, text.trim().to_string());
    }
    Ok(values)
}

/// Go's strconv.ParseBool, which Cilium's options use.
fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(ConfigError::new(
            key,
            format!("expected true or false, got {other:?}"),
        )),
    }
}

fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    duration::parse(value).map_err(|e| ConfigError::new(key, e.to_string()))
}

/// Parses a listen address; ":9972" means all IPv4 addresses, as in Go.
fn parse_listen(key: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    let full = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_string()
    };
    full.parse()
        .map(Some)
        .map_err(|_| ConfigError::new(key, format!("expected HOST:PORT or :PORT, got {value:?}")))
}

impl Config {
    /// Resolves every option from its sources, then validates the whole.
    pub fn resolve(raw: &RawInputs) -> Result<Config, ConfigError> {
        let config_dir = match (&raw.config_dir, raw.env.get(&env_name(CONFIG_DIR))) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(dir)) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => None,
        };
        let dir_values = match &config_dir {
            Some(dir) => read_config_dir(dir)?,
            None => BTreeMap::new(),
        };
        let mut effective = BTreeMap::new();
        let mut values = BTreeMap::new();
        for spec in OPTIONS {
            let (value, source) = if let Some(v) = raw.flags.get(spec.key) {
                (v.clone(), Source::Flag)
            } else if let Some(v) = raw.env.get(&env_name(spec.key)) {
                (v.trim().to_string(), Source::Env)
            } else if let Some(v) = dir_values.get(spec.key) {
                (v.clone(), Source::ConfigDir)
            } else {
                (spec.default.to_string(), Source::Default)
            };
            values.insert(spec.key, value.clone());
            effective.insert(
                spec.key.to_string(),
                EffectiveValue {
                    field: spec.field.to_string(),
                    value,
                    source: serde_json::to_value(source)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                },
            );
        }
        // Every key is present: the loop above inserted one value per spec.
        let get = |key: &str| values.get(key).map(String::as_str).unwrap_or_default();

        let lease_duration = parse_duration(
            "l2-announcements-lease-duration",
            get("l2-announcements-lease-duration"),
        )?;
        let renew_deadline = parse_duration(
            "l2-announcements-renew-deadline",
            get("l2-announcements-renew-deadline"),
        )?;
        let retry_period = parse_duration(
            "l2-announcements-retry-period",
            get("l2-announcements-retry-period"),
        )?;
        let liveness = parse_duration(
            "agent-liveness-update-interval",
            get("agent-liveness-update-interval"),
        )?;
        if lease_duration <= Duration::from_secs(1) {
            return Err(ConfigError::new(
                "l2-announcements-lease-duration",
                format!(
                    "must be greater than 1s (got {})",
                    duration::format(lease_duration)
                ),
            ));
        }
        if lease_duration <= renew_deadline {
            return Err(ConfigError::new(
                "l2-announcements-lease-duration",
                format!(
                    "must be greater than --l2-announcements-renew-deadline ({} <= {})",
                    duration::format(lease_duration),
                    duration::format(renew_deadline)
                ),
            ));
        }
        if retry_period.is_zero() {
            return Err(ConfigError::new(
                "l2-announcements-retry-period",
                "must be greater than 0",
            ));
        }
        if renew_deadline.as_secs_f64() <= 1.2 * retry_period.as_secs_f64() {
            return Err(ConfigError::new(
                "l2-announcements-renew-deadline",
                format!(
                    "must be greater than 1.2 x --l2-announcements-retry-period ({} <= 1.2 x {})",
                    duration::format(renew_deadline),
                    duration::format(retry_period)
                ),
            ));
        }
        if liveness.is_zero() || liveness >= lease_duration {
            return Err(ConfigError::new(
                "agent-liveness-update-interval",
                format!(
                    "must be greater than 0 and less than --l2-announcements-lease-duration ({})",
                    duration::format(lease_duration)
                ),
            ));
        }

        let qps_text = get("k8s-client-qps");
        let k8s_client_qps: f64 = qps_text.parse().map_err(|_| {
            ConfigError::new(
                "k8s-client-qps",
                format!("expected a number, got {qps_text:?}"),
            )
        })?;
        if !(k8s_client_qps.is_finite() && k8s_client_qps > 0.0) {
            return Err(ConfigError::new(
                "k8s-client-qps",
                format!("must be a positive number (got {qps_text})"),
            ));
        }
        let burst_text = get("k8s-client-burst");
        let k8s_client_burst: u32 = burst_text.parse().map_err(|_| {
            ConfigError::new(
                "k8s-client-burst",
                format!("expected a positive whole number, got {burst_text:?}"),
            )
        })?;
        if k8s_client_burst == 0 {
            return Err(ConfigError::new(
                "k8s-client-burst",
                "must be positive (got 0)",
            ));
        }

        let devices: DeviceFilter =
            get("devices")
                .parse()
                .map_err(|e: actors::devices::DeviceFilterError| {
                    ConfigError::new("devices", e.to_string())
                })?;

        let enable_l2_pod_announcements = parse_bool(
            "enable-l2-pod-announcements",
            get("enable-l2-pod-announcements"),
        )?;
        let l2_pod_announcements_interface = get("l2-pod-announcements-interface").to_string();
        if enable_l2_pod_announcements && l2_pod_announcements_interface.is_empty() {
            return Err(ConfigError::new(
                "l2-pod-announcements-interface",
                "must be set when --enable-l2-pod-announcements is true",
            ));
        }

        let node_name = match get("node-name") {
            "" => raw
                .env
                .get("K8S_NODE_NAME")
                .filter(|n| !n.is_empty())
                .cloned()
                .or_else(|| raw.host_name.clone())
                .unwrap_or_default(),
            name => name.to_string(),
        };
        if node_name.is_empty() {
            return Err(ConfigError::new(
                "node-name",
                "must be set (no $K8S_NODE_NAME and no host name)",
            ));
        }
        if let Some(e) = effective.get_mut("node-name") {
            e.value = node_name.clone();
        }
        let k8s_namespace = get("k8s-namespace").to_string();
        if k8s_namespace.is_empty() {
            return Err(ConfigError::new("k8s-namespace", "must not be empty"));
        }

        let l2_responder_mode = match get("l2-responder-mode") {
            "tc" => ResponderMode::Tc,
            "xdp" => ResponderMode::Xdp,
            other => {
                return Err(ConfigError::new(
                    "l2-responder-mode",
                    format!("expected tc or xdp, got {other:?}"),
                ));
            }
        };
        let count_text = get("l2-gratuitous-count");
        let l2_gratuitous_count: u32 = count_text.parse().map_err(|_| {
            ConfigError::new(
                "l2-gratuitous-count",
                format!("expected a whole number from 0, got {count_text:?}"),
            )
        })?;
        let l2_gratuitous_interval =
            parse_duration("l2-gratuitous-interval", get("l2-gratuitous-interval"))?;
        if l2_gratuitous_interval.is_zero() && l2_gratuitous_count > 1 {
            return Err(ConfigError::new(
                "l2-gratuitous-interval",
                "must be greater than 0 when more than one announcement is sent",
            ));
        }

        let log_format = match get("log-format") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new(
                    "log-format",
                    format!("expected text or json, got {other:?}"),
                ));
            }
        };
        let log_level = get("log-level").to_string();
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| ConfigError::new("log-level", e.to_string()))?;

        let non_empty_path = |key: &str| -> Result<PathBuf, ConfigError> {
            match get(key) {
                "" => Err(ConfigError::new(key, "must not be empty")),
                p => Ok(PathBuf::from(p)),
            }
        };

        Ok(Config {
            enable_l2_announcements: parse_bool(
                "enable-l2-announcements",
                get("enable-l2-announcements"),
            )?,
            lease_duration,
            renew_deadline,
            retry_period,
            k8s_client_qps,
            k8s_client_burst,
            devices,
            enable_external_ips: parse_bool("enable-external-ips", get("enable-external-ips"))?,
            enable_l2_pod_announcements,
            l2_pod_announcements_interface,
            agent_liveness_update_interval: liveness,
            l2_responder_mode,
            l2_gratuitous_count,
            l2_gratuitous_interval,
            node_name,
            k8s_namespace,
            k8s_kubeconfig_path: match get("k8s-kubeconfig-path") {
                "" => None,
                p => Some(PathBuf::from(p)),
            },
            state_dir: non_empty_path("state-dir")?,
            bpf_root: non_empty_path("bpf-root")?,
            prometheus_serve_addr: parse_listen(
                "prometheus-serve-addr",
                get("prometheus-serve-addr"),
            )?,
            api_socket: non_empty_path("api-socket")?,
            log_format,
            log_level,
            effective,
        })
    }

    /// The datapath's maximum liveness age: a dead agent's responder goes
    /// quiet after one lease duration, as in Cilium.
    pub fn max_liveness_age(&self) -> Duration {
        self.lease_duration
    }

    /// Path of the state database inside the state directory.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("statedb")
    }
}

/// Lines of `config --all`: `Field : value`, sorted by field like Cilium's.
pub fn render_effective(effective: &BTreeMap<String, EffectiveValue>, sources: bool) -> String {
    let mut rows: Vec<&EffectiveValue> = effective.values().collect();
    rows.sort_by(|a, b| a.field.cmp(&b.field));
    let width = rows.iter().map(|r| r.field.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        if sources {
            out.push_str(&format!(
                "{:<width$} : {}    ({})\n",
                r.field, r.value, r.source
            ));
        } else {
            out.push_str(&format!("{:<width$} : {}\n", r.field, r.value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(flags: &[(&str, &str)], env: &[(&str, &str)]) -> RawInputs {
        RawInputs {
            flags: flags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            config_dir: None,
            host_name: Some("host-a".into()),
        }
    }

    fn err(flags: &[(&str, &str)]) -> ConfigError {
        match Config::resolve(&raw(flags, &[])) {
            Ok(c) => panic!("expected an error for {flags:?}, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_match_cilium() {
        let c = Config::resolve(&raw(&[], &[])).expect("defaults are valid");
        assert!(!c.enable_l2_announcements);
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(5));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert_eq!(c.agent_liveness_update_interval, Duration::from_secs(1));
        assert_eq!(c.k8s_namespace, "kube-system");
        assert_eq!(c.node_name, "host-a");
        assert_eq!(c.max_liveness_age(), c.lease_duration);
        assert_eq!(
            c.effective["l2-announcements-lease-duration"].source,
            "default"
        );
        assert_eq!(
            c.prometheus_serve_addr,
            Some("0.0.0.0:9972".parse().expect("literal"))
        );
    }

    #[test]
    fn every_validation_rule_names_its_option() {
        /// Flags given, the option the error must name, a fragment of it.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                &[("l2-announcements-lease-duration", "15")],
                "l2-announcements-lease-duration",
                "unit",
            ),
            (
                &[("l2-announcements-lease-duration", "1s")],
                "l2-announcements-lease-duration",
                "greater than 1s",
            ),
            (
                &[("l2-announcements-lease-duration", "4s")],
                "l2-announcements-lease-duration",
                "greater than --l2-announcements-renew-deadline",
            ),
            (
                &[("l2-announcements-renew-deadline", "2400ms")],
                "l2-announcements-renew-deadline",
                "1.2 x",
            ),
            (
                &[("l2-announcements-retry-period", "0s")],
                "l2-announcements-retry-period",
                "greater than 0",
            ),
            (
                &[("l2-announcements-retry-period", "fast")],
                "l2-announcements-retry-period",
                "invalid duration",
            ),
            (&[("k8s-client-qps", "0")], "k8s-client-qps", "positive"),
            (&[("k8s-client-qps", "-3")], "k8s-client-qps", "positive"),
            (&[("k8s-client-qps", "many")], "k8s-client-qps", "number"),
            (&[("k8s-client-burst", "0")], "k8s-client-burst", "positive"),
            (
                &[("k8s-client-burst", "-1")],
                "k8s-client-burst",
                "positive",
            ),
            (&[("devices", "eth/0")], "devices", "does not allow"),
            (
                &[("devices", "e+th")],
                "devices",
                "only allowed once, at the end",
            ),
            (&[("devices", "averyveryverylongname")], "devices", "longer"),
            (
                &[("enable-l2-announcements", "yes")],
                "enable-l2-announcements",
                "true or false",
            ),
            (
                &[("enable-l2-pod-announcements", "true")],
                "l2-pod-announcements-interface",
                "must be set",
            ),
            (
                &[("agent-liveness-update-interval", "15s")],
                "agent-liveness-update-interval",
                "less than",
            ),
            (
                &[("prometheus-serve-addr", "nowhere")],
                "prometheus-serve-addr",
                "HOST:PORT",
            ),
            (&[("log-format", "xml")], "log-format", "text or json"),
            (
                &[("l2-responder-mode", "ebpf")],
                "l2-responder-mode",
                "tc or xdp",
            ),
            (
                &[("l2-gratuitous-count", "-1")],
                "l2-gratuitous-count",
                "whole number",
            ),
            (
                &[("l2-gratuitous-interval", "0s")],
                "l2-gratuitous-interval",
                "greater than 0",
            ),
            (&[("state-dir", "")], "state-dir", "must not be empty"),
        ];
        for (flags, option, fragment) in cases {
            let e = err(flags);
            assert_eq!(e.option, *option, "{flags:?} -> {e}");
            let line = e.to_string();
            assert!(
                line.contains(fragment),
                "{flags:?}: {line:?} lacks {fragment:?}"
            );
            assert!(line.starts_with(&format!("invalid option --{option}: ")));
            assert!(!line.contains('\n'), "one line: {line:?}");
        }
    }

    #[test]
    fn accepted_edge_values() {
        let c = Config::resolve(&raw(
            &[
                ("l2-announcements-lease-duration", "3s"),
                ("l2-announcements-renew-deadline", "1s"),
                ("l2-announcements-retry-period", "200ms"),
                ("agent-liveness-update-interval", "500ms"),
                ("devices", "eth+,bond0"),
                ("k8s-client-qps", "0.5"),
                ("enable-l2-announcements", "True"),
            ],
            &[],
        ))
        .expect("valid");
        assert_eq!(c.lease_duration, Duration::from_secs(3));
        assert_eq!(c.retry_period, Duration::from_millis(200));
        assert!(c.devices.matches("eth7") && c.devices.matches("bond0"));
        assert!(!c.devices.matches("bond1"));
        assert!(c.enable_l2_announcements);
        assert_eq!(c.k8s_client_qps, 0.5);
    }

    #[test]
    fn precedence_flag_env_config_dir_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("l2-announcements-lease-duration"), "20s\n").expect("write");
        std::fs::write(dir.path().join("l2-announcements-retry-period"), "1s").expect("write");
        std::fs::write(dir.path().join("k8s-client-burst"), "30").expect("write");
        std::fs::write(dir.path().join("kube-proxy-replacement"), "true").expect("write");
        std::fs::create_dir(dir.path().join("..data")).expect("mkdir");

        let mut inputs = raw(
            &[("l2-announcements-lease-duration", "30s")],
            &[
                ("L2ANNOUNCER_L2_ANNOUNCEMENTS_LEASE_DURATION", "25s"),
                ("L2ANNOUNCER_L2_ANNOUNCEMENTS_RETRY_PERIOD", "500ms"),
            ],
        );
        inputs.config_dir = Some(dir.path().to_path_buf());
        let c = Config::resolve(&inputs).expect("valid");
        // flag beats env and config-dir
        assert_eq!(c.lease_duration, Duration::from_secs(30));
        assert_eq!(
            c.effective["l2-announcements-lease-duration"].source,
            "flag"
        );
        // env beats config-dir
        assert_eq!(c.retry_period, Duration::from_millis(500));
        assert_eq!(c.effective["l2-announcements-retry-period"].source, "env");
        // config-dir beats default
        assert_eq!(c.k8s_client_burst, 30);
        assert_eq!(c.effective["k8s-client-burst"].source, "config-dir");
        // default
        assert_eq!(c.renew_deadline, Duration::from_secs(5));
        assert_eq!(
            c.effective["l2-announcements-renew-deadline"].source,
            "default"
        );

        // The config dir itself can come from the environment.
        let mut from_env = raw(&[], &[]);
        from_env.env.insert(
            env_name(CONFIG_DIR),
            dir.path().to_string_lossy().into_owned(),
        );
        let c = Config::resolve(&from_env).expect("valid");
        assert_eq!(c.lease_duration, Duration::from_secs(20));
    }

    #[test]
    fn bad_value_in_config_dir_names_the_option() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("k8s-client-qps"), "zero").expect("write");
        let mut inputs = raw(&[], &[]);
        inputs.config_dir = Some(dir.path().to_path_buf());
        let e = Config::resolve(&inputs).expect_err("bad qps");
        assert_eq!(e.option, "k8s-client-qps");

        inputs.config_dir = Some(dir.path().join("missing"));
        let e = Config::resolve(&inputs).expect_err("missing dir");
        assert_eq!(e.option, CONFIG_DIR);
    }

    #[test]
    fn node_name_fallbacks() {
        let c = Config::resolve(&raw(&[], &[("K8S_NODE_NAME", "worker-1")])).expect("valid");
        assert_eq!(c.node_name, "worker-1");
        assert_eq!(c.effective["node-name"].value, "worker-1");
        let c = Config::resolve(&raw(
            &[("node-name", "n2")],
            &[("K8S_NODE_NAME", "worker-1")],
        ))
        .expect("valid");
        assert_eq!(c.node_name, "n2");
        let mut none = raw(&[], &[]);
        none.host_name = None;
        assert_eq!(
            Config::resolve(&none).expect_err("no name").option,
            "node-name"
        );
    }

    #[test]
    fn effective_rendering_is_sorted_by_field() {
        let c = Config::resolve(&raw(&[("enable-l2-announcements", "true")], &[])).expect("valid");
        let text = render_effective(&c.effective, false);
        assert!(text.contains("EnableL2Announcements"));
        let line = text
            .lines()
            .find(|l| l.starts_with("EnableL2Announcements "))
            .expect("line");
        assert!(line.ends_with(": true"), "{line}");
        let fields: Vec<&str> = text
            .lines()
            .map(|l| l.split_whitespace().next().unwrap_or(""))
            .collect();
        let mut sorted = fields.clone();
        sorted.sort();
        assert_eq!(fields, sorted);
    }
}
