//! The agent's options (Cilium's key names) and how they resolve into a
//! validated [`Config`]. Each option is one field of [`Config`]: its clap
//! attribute holds the key (`long`), the name `config --all` prints (`id`),
//! the default and the value parser that carries the option's own rule; the
//! rules between options are in [`Config::validate`].
//!
//! Precedence, highest first:
//! 1. a command-line flag (`--l2-announcements-lease-duration=3s`);
//! 2. an environment variable, `L2ANNOUNCER_` + the key upper-cased with `-`
//!    turned into `_` (`L2ANNOUNCER_L2_ANNOUNCEMENTS_LEASE_DURATION=3s`);
//!    the node name also falls back to `K8S_NODE_NAME` (as Cilium's agent),
//!    then to the host name;
//! 3. a file named after the key in `--config-dir` (a ConfigMap mounted as a
//!    directory; keys this agent does not know, e.g. `kube-proxy-replacement`,
//!    are ignored so a Cilium ConfigMap can be mounted unchanged);
//! 4. the built-in default.
//!
//! clap does 1, 2 and 4 (see [`crate::cli::command`] for the environment
//! names); this module adds 3 and the checks between options. It does not
//! parse the other subcommands' arguments.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, ValueEnum};
use serde::{Deserialize, Serialize};

use actors::devices::DeviceFilter;

use crate::duration;
use value::{
    choice, go_bool, lease_duration, listen_address, log_filter, non_empty, non_empty_path,
    nonzero_duration, optional_interface, optional_path, positive_number, positive_whole_number,
    text, whole_number,
};

/// The key of the socket option, shared with the query commands.
pub const API_SOCKET: &str = "api-socket";
/// Where the agent listens and the query commands look.
pub const DEFAULT_API_SOCKET: &str = "/var/run/l2announcer/l2announcer.sock";
const CONFIG_DIR: &str = "config-dir";
const ENV_PREFIX: &str = "L2ANNOUNCER_";
/// The node name's fallback variable, set by the DaemonSet as Cilium's is.
const K8S_NODE_NAME: &str = "K8S_NODE_NAME";

// Keys that the rules between options name; every other key is written
// only in its field's attribute.
const LEASE_DURATION: &str = "l2-announcements-lease-duration";
const RENEW_DEADLINE: &str = "l2-announcements-renew-deadline";
const RETRY_PERIOD: &str = "l2-announcements-retry-period";
const LIVENESS_INTERVAL: &str = "agent-liveness-update-interval";
const POD_ANNOUNCEMENTS: &str = "enable-l2-pod-announcements";
const POD_INTERFACE: &str = "l2-pod-announcements-interface";
const GRATUITOUS_INTERVAL: &str = "l2-gratuitous-interval";
const NODE_NAME: &str = "node-name";

/// Where the responder attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResponderMode {
    Tc,
    Xdp,
}

/// How the node announcing each claim is elected (see actors::lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Election {
    /// A heartbeat Lease per node and an assignment record: API cost
    /// O(nodes).
    NodeHeartbeat,
    /// Cilium's scheme: one Lease per Service, renewed every retry period.
    PerService,
    /// per-service with candidates polling every Lease (benchmark only).
    #[value(hide = true)]
    ClientGo,
}

impl From<Election> for actors::lease::ElectionMode {
    fn from(e: Election) -> Self {
        match e {
            Election::NodeHeartbeat => actors::lease::ElectionMode::NodeHeartbeat,
            Election::PerService => actors::lease::ElectionMode::PerService,
            Election::ClientGo => actors::lease::ElectionMode::ClientGo,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration of one agent, in `--help` order.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Announce Service IPs selected by CiliumL2AnnouncementPolicy objects
    #[arg(long = "enable-l2-announcements", id = "EnableL2Announcements")]
    #[arg(value_name = "BOOL", default_value = "false", value_parser = go_bool)]
    pub enable_l2_announcements: bool,
    /// How long a lease stays valid without renewal (> 1s and > renew deadline)
    #[arg(long = LEASE_DURATION, id = "L2AnnouncerLeaseDuration")]
    #[arg(value_name = "DURATION", default_value = "15s", value_parser = lease_duration)]
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it stops announcing (> 1.2 x retry period)
    #[arg(long = RENEW_DEADLINE, id = "L2AnnouncerRenewDeadline")]
    #[arg(value_name = "DURATION", default_value = "5s", value_parser = duration::parse)]
    pub renew_deadline: Duration,
    /// Interval between renewals and between acquisition attempts
    #[arg(long = RETRY_PERIOD, id = "L2AnnouncerRetryPeriod")]
    #[arg(value_name = "DURATION", default_value = "2s", value_parser = nonzero_duration)]
    pub retry_period: Duration,
    /// How the announcing node is elected: node-heartbeat (one heartbeat per node, API cost O(nodes)) or per-service (a Lease per Service, as Cilium)
    #[arg(long = "l2-announcements-election", id = "L2AnnouncementsElection")]
    #[arg(value_name = "VALUE", default_value = "node-heartbeat", value_parser = choice::<Election>)]
    pub l2_announcements_election: Election,
    /// Sustained Kubernetes API requests per second (token bucket rate)
    #[arg(long = "k8s-client-qps", id = "K8sClientQPS")]
    #[arg(value_name = "NUMBER", default_value = "5", value_parser = positive_number)]
    pub k8s_client_qps: f64,
    /// Kubernetes API request burst (token bucket size)
    #[arg(long = "k8s-client-burst", id = "K8sClientBurst")]
    #[arg(value_name = "NUMBER", default_value = "10", value_parser = positive_whole_number)]
    pub k8s_client_burst: u32,
    /// Devices that may announce: names and prefix wildcards (eth+), comma separated; empty = all
    #[arg(long = "devices", id = "Devices")]
    #[arg(value_name = "LIST", default_value = "")]
    pub devices: DeviceFilter,
    /// Allow announcing Service externalIPs
    #[arg(long = "enable-external-ips", id = "EnableExternalIPs")]
    #[arg(value_name = "BOOL", default_value = "false", value_parser = go_bool)]
    pub enable_external_ips: bool,
    /// Send gratuitous ARP for local pod IPs
    #[arg(long = POD_ANNOUNCEMENTS, id = "EnableL2PodAnnouncements")]
    #[arg(value_name = "BOOL", default_value = "false", value_parser = go_bool)]
    pub enable_l2_pod_announcements: bool,
    /// Interface on which the pod addresses are announced (required with --enable-l2-pod-announcements)
    #[arg(long = POD_INTERFACE, id = "L2PodAnnouncementsInterface")]
    #[arg(value_name = "VALUE", default_value = "", value_parser = optional_interface)]
    pub l2_pod_announcements_interface: String,
    /// How often the agent refreshes the datapath liveness stamp (< lease duration)
    #[arg(long = LIVENESS_INTERVAL, id = "AgentLivenessUpdateInterval")]
    #[arg(value_name = "DURATION", default_value = "1s", value_parser = duration::parse)]
    pub agent_liveness_update_interval: Duration,
    /// Where the eBPF responder attaches: tc (TC ingress) or xdp
    #[arg(long = "l2-responder-mode", id = "L2ResponderMode")]
    #[arg(value_name = "VALUE", default_value = "tc", value_parser = choice::<ResponderMode>)]
    pub l2_responder_mode: ResponderMode,
    /// Gratuitous ARP / unsolicited NA sent per new entry (0 disables)
    #[arg(long = "l2-gratuitous-count", id = "L2GratuitousCount")]
    #[arg(value_name = "NUMBER", default_value = "3", value_parser = whole_number)]
    pub l2_gratuitous_count: u32,
    /// Interval between the gratuitous announcements of one entry
    #[arg(long = GRATUITOUS_INTERVAL, id = "L2GratuitousInterval")]
    #[arg(value_name = "DURATION", default_value = "1s", value_parser = duration::parse)]
    pub l2_gratuitous_interval: Duration,
    /// This node's Kubernetes name (default: $K8S_NODE_NAME, then the host name)
    #[arg(long = NODE_NAME, id = "NodeName")]
    #[arg(value_name = "VALUE", default_value = "", value_parser = text)]
    pub node_name: String,
    /// Namespace of the agent and of its leases
    #[arg(long = "k8s-namespace", id = "K8sNamespace")]
    #[arg(value_name = "VALUE", default_value = "kube-system", value_parser = non_empty)]
    pub k8s_namespace: String,
    /// Kubeconfig file (default: in-cluster service account, then $KUBECONFIG)
    #[arg(long = "k8s-kubeconfig-path", id = "K8sKubeconfigPath")]
    #[arg(value_name = "VALUE", default_value = "", value_parser = optional_path)]
    pub k8s_kubeconfig_path: ::std::option::Option<PathBuf>,
    /// Directory of the state database
    #[arg(long = "state-dir", id = "StateDir")]
    #[arg(value_name = "VALUE", default_value = "/var/lib/l2announcer", value_parser = non_empty_path)]
    pub state_dir: PathBuf,
    /// bpffs directory where the datapath maps are pinned
    #[arg(long = "bpf-root", id = "BpfRoot")]
    #[arg(value_name = "VALUE", default_value = "/sys/fs/bpf/l2announcer", value_parser = non_empty_path)]
    pub bpf_root: PathBuf,
    /// Address of /metrics, /healthz and /readyz (empty disables)
    #[arg(long = "prometheus-serve-addr", id = "PrometheusServeAddr")]
    #[arg(value_name = "VALUE", default_value = ":9972", value_parser = listen_address)]
    pub prometheus_serve_addr: ::std::option::Option<SocketAddr>,
    /// Unix socket of the local API (used by `l2announcer statedb`)
    #[arg(long = API_SOCKET, id = "APISocket")]
    #[arg(value_name = "VALUE", default_value = DEFAULT_API_SOCKET, value_parser = non_empty_path)]
    pub api_socket: PathBuf,
    /// Log format: text or json
    #[arg(long = "log-format", id = "LogFormat")]
    #[arg(value_name = "VALUE", default_value = "text", value_parser = choice::<LogFormat>)]
    pub log_format: LogFormat,
    /// Log filter: error, warn, info, debug, trace or a tracing directive
    #[arg(long = "log-level", id = "LogLevel")]
    #[arg(value_name = "VALUE", default_value = "info", value_parser = log_filter)]
    pub log_level: String,
    /// Effective value text and its source, per key, for `config --all`.
    #[arg(skip)]
    pub effective: BTreeMap<String, EffectiveValue>,
}

/// One line of `config --all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveValue {
    pub field: String,
    pub value: String,
    pub source: Source,
}

/// Where an option's effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Flag,
    Env,
    ConfigDir,
    Default,
}

/// A refused option: always names the option and the rule it broke, and
/// the file when the value came from `--config-dir`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub option: String,
    pub message: String,
    pub file: Option<PathBuf>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid option --{}: {}", self.option, self.message)?;
        match &self.file {
            Some(file) => write!(f, " (from {})", file.display()),
            None => Ok(()),
        }
    }
}

impl ConfigError {
    fn new(option: &str, message: impl Into<String>) -> Self {
        ConfigError {
            option: option.to_string(),
            message: message.into(),
            file: None,
        }
    }

    /// The option and rule of a value that an option's parser refused in
    /// `cmd` (or one of its subcommands); `None` for every other clap error.
    pub fn from_clap(e: &clap::Error, cmd: &Command) -> Option<ConfigError> {
        if e.kind() != ErrorKind::ValueValidation {
            return None;
        }
        let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
            return None;
        };
        let mut cmd = cmd.clone();
        cmd.build();
        let option = long_of(&cmd, shown)?;
        let rule = std::error::Error::source(e)?;
        Some(ConfigError::new(&option, rule.to_string()))
    }
}

/// The key of the argument that clap shows as `shown` in its errors.
fn long_of(cmd: &Command, shown: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.to_string() == shown)
        .and_then(|a| a.get_long().map(str::to_string))
        .or_else(|| cmd.get_subcommands().find_map(|sub| long_of(sub, shown)))
}

/// The environment variable that sets `key`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// The shape every option shares: a value may start with `-` (so that
/// `--k8s-client-burst -2` reaches the rule), and a boolean is true when
/// given alone (`--enable-l2-announcements`) and takes `=false` explicitly.
pub fn shape(arg: Arg) -> Arg {
    if arg.get_value_parser().type_id() == TypeId::of::<bool>() {
        arg.action(ArgAction::Set)
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
    } else {
        arg.allow_hyphen_values(true)
    }
}

/// Every option key: [`Config`]'s fields and `config-dir`.
pub fn option_keys() -> Vec<String> {
    longs(Options::augment_args(Command::new("options")))
}

/// A command holding only the arguments of [`Config`]'s fields.
fn config_args() -> Command {
    Config::augment_args(Command::new("options"))
}

fn longs(cmd: Command) -> Vec<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

/// The options of `run` (and of `config --local`) as clap found them in
/// flags, environment and built-in defaults, and `--config-dir`: not yet
/// layered with the config dir nor checked against each other.
#[derive(Debug, Clone)]
pub struct Options {
    given: Config,
    config_dir: Option<PathBuf>,
    /// Per key: the value's text and where clap found it.
    effective: BTreeMap<String, EffectiveValue>,
}

impl Args for Options {
    fn augment_args(cmd: Command) -> Command {
        Config::augment_args(cmd).arg(
            Arg::new(CONFIG_DIR)
                .long(CONFIG_DIR)
                .value_name("DIR")
                .value_parser(optional_path)
                .help("Directory with one file per option key (a mounted ConfigMap)"),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for Options {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let effective = config_args()
            .get_arguments()
            .filter_map(|arg| {
                let id = arg.get_id().as_str();
                let source = match matches.value_source(id)? {
                    ValueSource::CommandLine => Source::Flag,
                    ValueSource::EnvVariable => Source::Env,
                    _ => Source::Default,
                };
                let value = matches
                    .get_raw(id)
                    .and_then(|mut values| values.next())
                    .map(|v| v.to_string_lossy().trim().to_string())
                    .unwrap_or_default();
                let line = EffectiveValue {
                    field: id.to_string(),
                    value,
                    source,
                };
                Some((arg.get_long()?.to_string(), line))
            })
            .collect();
        Ok(Options {
            given: Config::from_arg_matches(matches)?,
            config_dir: matches
                .get_one::<Option<PathBuf>>(CONFIG_DIR)
                .cloned()
                .flatten(),
            effective,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Options {
    /// The socket of the running agent as flags and environment say, for
    /// the query commands (they do not read the config dir).
    pub fn api_socket(&self) -> &Path {
        &self.given.api_socket
    }

    /// Layers the config dir under flags and environment, fills the node
    /// name from `node_name_fallback` when no layer sets it, and checks the
    /// options against each other.
    pub fn resolve(self, node_name_fallback: Option<String>) -> Result<Config, ConfigError> {
        let Options {
            given: mut config,
            config_dir,
            mut effective,
        } = self;
        if let Some(dir) = &config_dir {
            // Flags and environment beat the config dir.
            let values: Vec<(String, String)> = read_config_dir(dir)?
                .into_iter()
                .filter(|(key, _)| {
                    effective
                        .get(key)
                        .is_some_and(|e| e.source == Source::Default)
                })
                .collect();
            config
                .update_from_arg_matches(&parse_config_dir(dir, &values)?)
                .map_err(|e| ConfigError::new(CONFIG_DIR, e.kind().to_string()))?;
            for (key, value) in values {
                if let Some(line) = effective.get_mut(&key) {
                    line.value = value;
                    line.source = Source::ConfigDir;
                }
            }
        }
        if config.node_name.is_empty() {
            config.node_name = node_name_fallback.unwrap_or_default();
            if let Some(line) = effective.get_mut(NODE_NAME) {
                line.value = config.node_name.clone();
            }
        }
        if let Err(mut e) = config.validate() {
            let from_file = effective
                .get(&e.option)
                .is_some_and(|line| line.source == Source::ConfigDir);
            e.file = config_dir.filter(|_| from_file).map(|d| d.join(&e.option));
            return Err(e);
        }
        config.effective = effective;
        Ok(config)
    }
}

/// Reads one file per known key from a mounted ConfigMap directory.
fn read_config_dir(dir: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let unreadable = |e: std::io::Error| {
        ConfigError::new(CONFIG_DIR, format!("cannot read {}: {e}", dir.display()))
    };
    let keys = longs(config_args());
    let mut values = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let name = entry.map_err(unreadable)?.file_name();
        let name = name.to_string_lossy();
        // ConfigMap volumes hold `..data` links and hidden bookkeeping.
        if name.starts_with('.') || !keys.iter().any(|k| *k == name) {
            continue;
        }
        let text = std::fs::read_to_string(dir.join(name.as_ref()))
            .map_err(|e| ConfigError::new(CONFIG_DIR, format!("cannot read key {name}: {e}")))?;
        values.push((name.into_owned(), text.trim().to_string()));
    }
    values.sort();
    Ok(values)
}

/// Parses the config dir's values with the options' own parsers: as a
/// command line of `--key=value`, without environment or defaults, so that
/// only the keys given are set.
fn parse_config_dir(dir: &Path, values: &[(String, String)]) -> Result<ArgMatches, ConfigError> {
    let cmd = config_args()
        .no_binary_name(true)
        .mut_args(|arg| shape(arg).default_value(None::<&'static str>));
    let argv = values.iter().map(|(key, value)| format!("--{key}={value}"));
    cmd.clone()
        .try_get_matches_from(argv)
        .map_err(|e| match ConfigError::from_clap(&e, &cmd) {
            Some(mut refused) => {
                refused.file = Some(dir.join(&refused.option));
                refused
            }
            None => ConfigError::new(CONFIG_DIR, e.kind().to_string()),
        })
}

impl Config {
    /// The rules between options; each option's own rule is its parser's.
    fn validate(&self) -> Result<(), ConfigError> {
        let fmt = duration::format;
        if self.lease_duration <= self.renew_deadline {
            return Err(ConfigError::new(
                LEASE_DURATION,
                format!(
                    "must be greater than --{RENEW_DEADLINE} ({} <= {})",
                    fmt(self.lease_duration),
                    fmt(self.renew_deadline)
                ),
            ));
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return Err(ConfigError::new(
                RENEW_DEADLINE,
                format!(
                    "must be greater than 1.2 x --{RETRY_PERIOD} ({} <= 1.2 x {})",
                    fmt(self.renew_deadline),
                    fmt(self.retry_period)
                ),
            ));
        }
        let liveness = self.agent_liveness_update_interval;
        if liveness.is_zero() || liveness >= self.lease_duration {
            return Err(ConfigError::new(
                LIVENESS_INTERVAL,
                format!(
                    "must be greater than 0 and less than --{LEASE_DURATION} ({})",
                    fmt(self.lease_duration)
                ),
            ));
        }
        if self.enable_l2_pod_announcements && self.l2_pod_announcements_interface.is_empty() {
            return Err(ConfigError::new(
                POD_INTERFACE,
                format!("must be set when --{POD_ANNOUNCEMENTS} is true"),
            ));
        }
        if self.node_name.is_empty() {
            return Err(ConfigError::new(
                NODE_NAME,
                format!("must be set (no ${K8S_NODE_NAME} and no host name)"),
            ));
        }
        if self.l2_gratuitous_interval.is_zero() && self.l2_gratuitous_count > 1 {
            return Err(ConfigError::new(
                GRATUITOUS_INTERVAL,
                "must be greater than 0 when more than one announcement is sent",
            ));
        }
        Ok(())
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

/// The node name when no option sets it: `$K8S_NODE_NAME`, then the host
/// name.
pub fn node_name_fallback() -> Option<String> {
    std::env::var(K8S_NODE_NAME)
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(host_name)
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into a valid buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// Lines of `config --all`: `Field : value`, sorted by field like Cilium's.
pub fn render_effective(effective: &BTreeMap<String, EffectiveValue>) -> String {
    let mut rows: Vec<&EffectiveValue> = effective.values().collect();
    rows.sort_by(|a, b| a.field.cmp(&b.field));
    let width = rows.iter().map(|r| r.field.len()).max().unwrap_or(0);
    rows.iter()
        .map(|r| format!("{:<width$} : {}\n", r.field, r.value))
        .collect()
}

/// The options' value parsers: each carries one option's own rule, and
/// its error text is the rule as the operator reads it. Surrounding blanks
/// (a file's newline, a padded variable) do not count.
pub(crate) mod value {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    use clap::ValueEnum;

    use crate::duration;

    /// A value an option's rule refuses; the text is the rule.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct Refused(String);

    /// Go's strconv.ParseBool, which Cilium's options use.
    pub fn go_bool(value: &str) -> Result<bool, Refused> {
        match value.trim() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            other => Err(Refused(format!("expected true or false, got {other:?}"))),
        }
    }

    /// A duration longer than one second.
    pub fn lease_duration(value: &str) -> Result<Duration, Refused> {
        let d = duration::parse(value).map_err(|e| Refused(e.to_string()))?;
        if d <= Duration::from_secs(1) {
            return Err(Refused(format!(
                "must be greater than 1s (got {})",
                duration::format(d)
            )));
        }
        Ok(d)
    }

    pub fn nonzero_duration(value: &str) -> Result<Duration, Refused> {
        match duration::parse(value) {
            Ok(d) if d.is_zero() => Err(Refused("must be greater than 0".into())),
            Ok(d) => Ok(d),
            Err(e) => Err(Refused(e.to_string())),
        }
    }

    /// A finite number above zero.
    pub fn positive_number(value: &str) -> Result<f64, Refused> {
        let value = value.trim();
        let n: f64 = value
            .parse()
            .map_err(|_| Refused(format!("expected a number, got {value:?}")))?;
        if !(n.is_finite() && n > 0.0) {
            return Err(Refused(format!("must be a positive number (got {value})")));
        }
        Ok(n)
    }

    pub fn positive_whole_number(value: &str) -> Result<u32, Refused> {
        let value = value.trim();
        match value.parse() {
            Ok(0) => Err(Refused("must be positive (got 0)".into())),
            Ok(n) => Ok(n),
            Err(_) => Err(Refused(format!(
                "expected a positive whole number, got {value:?}"
            ))),
        }
    }

    pub fn whole_number(value: &str) -> Result<u32, Refused> {
        let value = value.trim();
        value
            .parse()
            .map_err(|_| Refused(format!("expected a whole number from 0, got {value:?}")))
    }

    pub fn text(value: &str) -> Result<String, Refused> {
        Ok(value.trim().to_string())
    }

    pub fn non_empty(value: &str) -> Result<String, Refused> {
        match value.trim() {
            "" => Err(Refused("must not be empty".into())),
            v => Ok(v.to_string()),
        }
    }

    /// One interface name (as a `--devices` entry, without wildcard), or
    /// none when empty.
    pub fn optional_interface(value: &str) -> Result<String, Refused> {
        match value.trim() {
            "" => Ok(String::new()),
            v => actors::devices::interface_name(v).map_err(|e| Refused(e.to_string())),
        }
    }

    pub fn non_empty_path(value: &str) -> Result<PathBuf, Refused> {
        non_empty(value).map(PathBuf::from)
    }

    /// A path, or none when empty.
    pub fn optional_path(value: &str) -> Result<Option<PathBuf>, Refused> {
        let value = value.trim();
        Ok((!value.is_empty()).then(|| PathBuf::from(value)))
    }

    /// A listen address; ":9972" means all IPv4 addresses, as in Go; empty
    /// means none.
    pub fn listen_address(value: &str) -> Result<Option<SocketAddr>, Refused> {
        let value = value.trim();
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
            .map_err(|_| Refused(format!("expected HOST:PORT or :PORT, got {value:?}")))
    }

    /// A tracing filter directive.
    pub fn log_filter(value: &str) -> Result<String, Refused> {
        let value = value.trim();
        tracing_subscriber::EnvFilter::try_new(value)
            .map(|_| value.to_string())
            .map_err(|e| Refused(e.to_string()))
    }

    /// One of an enum's names: `expected tc or xdp, got "ebpf"`.
    pub fn choice<T: ValueEnum>(value: &str) -> Result<T, Refused> {
        let value = value.trim();
        T::from_str(value, false).map_err(|_| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .filter(|p| !p.is_hide_set())
                .map(|p| p.get_name().to_string())
                .collect();
            Refused(format!("expected {}, got {value:?}", names.join(" or ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{self, Command as Sub};

    /// `run` with `flags`, as main sees it: a value refused by its parser
    /// comes back as the same one-line error as a rule between options.
    fn options(flags: &[String]) -> Result<Options, ConfigError> {
        let argv = ["l2announcer".to_string(), "run".to_string()]
            .into_iter()
            .chain(flags.iter().cloned());
        match cli::parse(argv) {
            Ok(parsed) => match parsed.command {
                Sub::Run(options) => Ok(options),
                other => panic!("expected run, got {other:?}"),
            },
            Err(e) => Err(ConfigError::from_clap(&e, &cli::command())
                .unwrap_or_else(|| panic!("not an option's rule: {e}"))),
        }
    }

    fn flags(pairs: &[(&str, &str)]) -> Vec<String> {
        pairs.iter().map(|(k, v)| format!("--{k}={v}")).collect()
    }

    fn resolve(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        options(&flags(pairs))?.resolve(Some("host-a".into()))
    }

    fn with_dir(pairs: &[(&str, &str)], dir: &Path) -> Result<Config, ConfigError> {
        let mut given = flags(pairs);
        given.push(format!("--{CONFIG_DIR}={}", dir.display()));
        options(&given)?.resolve(Some("host-a".into()))
    }

    #[test]
    fn defaults_match_cilium() {
        let c = resolve(&[]).expect("defaults are valid");
        assert!(!c.enable_l2_announcements);
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(5));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert_eq!(c.agent_liveness_update_interval, Duration::from_secs(1));
        assert_eq!(c.k8s_client_qps, 5.0);
        assert_eq!(c.k8s_client_burst, 10);
        assert_eq!(c.k8s_namespace, "kube-system");
        assert_eq!(c.node_name, "host-a");
        assert_eq!(c.k8s_kubeconfig_path, None);
        assert_eq!(c.api_socket, PathBuf::from(DEFAULT_API_SOCKET));
        assert_eq!(c.l2_responder_mode, ResponderMode::Tc);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.max_liveness_age(), c.lease_duration);
        let lease = &c.effective[LEASE_DURATION];
        assert_eq!(
            (lease.field.as_str(), lease.value.as_str(), lease.source),
            ("L2AnnouncerLeaseDuration", "15s", Source::Default)
        );
        assert_eq!(
            c.prometheus_serve_addr,
            Some("0.0.0.0:9972".parse().expect("literal"))
        );
        // One line per option, config-dir not among them.
        assert_eq!(c.effective.len(), option_keys().len() - 1);
    }

    #[test]
    fn every_validation_rule_names_its_option() {
        /// Flags given, the option the error must name, a fragment of it.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[(LEASE_DURATION, "15")], LEASE_DURATION, "unit"),
            (&[(LEASE_DURATION, "1s")], LEASE_DURATION, "greater than 1s"),
            (
                &[(LEASE_DURATION, "5s")],
                LEASE_DURATION,
                "must be greater than --l2-announcements-renew-deadline (5s <= 5s)",
            ),
            (&[(RENEW_DEADLINE, "2400ms")], RENEW_DEADLINE, "1.2 x"),
            (&[(RETRY_PERIOD, "0s")], RETRY_PERIOD, "greater than 0"),
            (&[(RETRY_PERIOD, "fast")], RETRY_PERIOD, "invalid duration"),
            (&[("k8s-client-qps", "0")], "k8s-client-qps", "positive"),
            (&[("k8s-client-qps", "-3")], "k8s-client-qps", "positive"),
            (&[("k8s-client-qps", "inf")], "k8s-client-qps", "positive"),
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
                "expected true or false, got \"yes\"",
            ),
            (&[(POD_ANNOUNCEMENTS, "true")], POD_INTERFACE, "must be set"),
            (
                &[(POD_INTERFACE, "eth+")],
                POD_INTERFACE,
                "one interface name",
            ),
            (&[(POD_INTERFACE, "eth 0")], POD_INTERFACE, "does not allow"),
            (
                &[(LIVENESS_INTERVAL, "15s")],
                LIVENESS_INTERVAL,
                "less than",
            ),
            (
                &[(LIVENESS_INTERVAL, "0s")],
                LIVENESS_INTERVAL,
                "greater than 0",
            ),
            (
                &[("prometheus-serve-addr", "nowhere")],
                "prometheus-serve-addr",
                "HOST:PORT",
            ),
            (
                &[("log-format", "xml")],
                "log-format",
                "expected text or json, got \"xml\"",
            ),
            (&[("log-level", "a=b=c")], "log-level", "level"),
            (
                &[("l2-responder-mode", "ebpf")],
                "l2-responder-mode",
                "expected tc or xdp, got \"ebpf\"",
            ),
            (
                &[("l2-gratuitous-count", "-1")],
                "l2-gratuitous-count",
                "whole number",
            ),
            (
                &[(GRATUITOUS_INTERVAL, "0s")],
                GRATUITOUS_INTERVAL,
                "greater than 0",
            ),
            (&[("state-dir", "")], "state-dir", "must not be empty"),
            (&[("bpf-root", "")], "bpf-root", "must not be empty"),
            (&[(API_SOCKET, "")], API_SOCKET, "must not be empty"),
            (
                &[("k8s-namespace", " ")],
                "k8s-namespace",
                "must not be empty",
            ),
        ];
        for (pairs, option, fragment) in cases {
            let e = match resolve(pairs) {
                Ok(c) => panic!("expected an error for {pairs:?}, got {c:?}"),
                Err(e) => e,
            };
            assert_eq!(e.option, *option, "{pairs:?} -> {e}");
            let line = e.to_string();
            assert!(
                line.contains(fragment),
                "{pairs:?}: {line:?} lacks {fragment:?}"
            );
            assert!(line.starts_with(&format!("invalid option --{option}: ")));
            assert!(!line.contains('\n'), "one line: {line:?}");
            assert_eq!(e.file, None);
        }
    }

    #[test]
    fn accepted_edge_values() {
        let c = resolve(&[
            (LEASE_DURATION, "3s"),
            (RENEW_DEADLINE, "1s"),
            (RETRY_PERIOD, "200ms"),
            (LIVENESS_INTERVAL, "500ms"),
            ("devices", "eth+,bond0"),
            ("k8s-client-qps", "0.5"),
            ("enable-l2-announcements", "True"),
            ("prometheus-serve-addr", ""),
            ("k8s-kubeconfig-path", "/etc/kubeconfig"),
            ("l2-responder-mode", "xdp"),
            ("l2-gratuitous-count", "0"),
            (GRATUITOUS_INTERVAL, "0s"),
        ])
        .expect("valid");
        assert_eq!(c.lease_duration, Duration::from_secs(3));
        assert_eq!(c.retry_period, Duration::from_millis(200));
        assert!(c.devices.matches("eth7") && c.devices.matches("bond0"));
        assert!(!c.devices.matches("bond1"));
        assert!(c.enable_l2_announcements);
        assert_eq!(c.k8s_client_qps, 0.5);
        assert_eq!(c.prometheus_serve_addr, None);
        assert_eq!(c.k8s_kubeconfig_path, Some("/etc/kubeconfig".into()));
        assert_eq!(c.l2_responder_mode, ResponderMode::Xdp);
        // The text as given, not as parsed.
        assert_eq!(c.effective["enable-l2-announcements"].value, "True");
        assert_eq!(c.effective["devices"].value, "eth+,bond0");
        assert_eq!(c.effective["devices"].source, Source::Flag);
        // A value may be a separate word, even one starting with a hyphen.
        let e = options(&["--k8s-client-burst".into(), "-2".into()]).expect_err("refused");
        assert_eq!(e.option, "k8s-client-burst");
    }

    #[test]
    fn precedence_flag_config_dir_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |key: &str, text: &str| {
            std::fs::write(dir.path().join(key), text).expect("write");
        };
        write(LEASE_DURATION, "20s\n");
        write(RETRY_PERIOD, "1s");
        write("k8s-client-burst", "30");
        write("enable-l2-announcements", "true\n");
        write("kube-proxy-replacement", "true");
        write(CONFIG_DIR, "/elsewhere");
        std::fs::create_dir(dir.path().join("..data")).expect("mkdir");

        let c = with_dir(&[(LEASE_DURATION, "30s")], dir.path()).expect("valid");
        // flag beats config-dir
        assert_eq!(c.lease_duration, Duration::from_secs(30));
        assert_eq!(c.effective[LEASE_DURATION].source, Source::Flag);
        // config-dir beats default
        assert_eq!(c.retry_period, Duration::from_secs(1));
        assert_eq!(c.k8s_client_burst, 30);
        assert!(c.enable_l2_announcements);
        let burst = &c.effective["k8s-client-burst"];
        assert_eq!(
            (burst.value.as_str(), burst.source),
            ("30", Source::ConfigDir)
        );
        // default
        assert_eq!(c.renew_deadline, Duration::from_secs(5));
        assert_eq!(c.effective[RENEW_DEADLINE].source, Source::Default);
        assert!(!c.effective.contains_key("kube-proxy-replacement"));
    }

    #[test]
    fn pod_announcements_read_from_cilium_configmap_keys() {
        // The reference's ConfigMap form of L2 Pod Announcements.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(POD_ANNOUNCEMENTS), "true\n").expect("write");
        std::fs::write(dir.path().join(POD_INTERFACE), "eth0\n").expect("write");
        let c = with_dir(&[], dir.path()).expect("valid");
        assert!(c.enable_l2_pod_announcements);
        assert_eq!(c.l2_pod_announcements_interface, "eth0");
        assert_eq!(c.effective[POD_INTERFACE].source, Source::ConfigDir);
        // Off by default, and then the interface may stay unset.
        let c = resolve(&[]).expect("valid");
        assert!(!c.enable_l2_pod_announcements);
        assert_eq!(c.l2_pod_announcements_interface, "");
    }

    #[test]
    fn bad_value_in_config_dir_names_the_option_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let qps = dir.path().join("k8s-client-qps");
        std::fs::write(&qps, "zero\n").expect("write");
        let e = with_dir(&[], dir.path()).expect_err("bad qps");
        assert_eq!(e.option, "k8s-client-qps");
        assert_eq!(e.file.as_deref(), Some(qps.as_path()));
        assert_eq!(
            e.to_string(),
            format!(
                "invalid option --k8s-client-qps: expected a number, got \"zero\" (from {})",
                qps.display()
            )
        );
        // A flag shadows the bad file: it is not read.
        with_dir(&[("k8s-client-qps", "7")], dir.path()).expect("flag wins");

        // A rule between options names the file of the option it names.
        std::fs::remove_file(&qps).expect("rm");
        let lease = dir.path().join(LEASE_DURATION);
        std::fs::write(&lease, "5s").expect("write");
        let e = with_dir(&[], dir.path()).expect_err("lease <= renew");
        assert_eq!(e.option, LEASE_DURATION);
        assert_eq!(e.file.as_deref(), Some(lease.as_path()));
        let e = with_dir(&[(RENEW_DEADLINE, "6s")], dir.path()).expect_err("lease <= renew");
        assert_eq!(e.option, LEASE_DURATION);

        let missing = dir.path().join("missing");
        let e = with_dir(&[], &missing).expect_err("missing dir");
        assert_eq!(e.option, CONFIG_DIR);
    }

    #[test]
    fn node_name_fallbacks() {
        let c = options(&[])
            .expect("parse")
            .resolve(Some("worker-1".into()))
            .expect("valid");
        assert_eq!(c.node_name, "worker-1");
        assert_eq!(c.effective[NODE_NAME].value, "worker-1");
        assert_eq!(c.effective[NODE_NAME].source, Source::Default);
        let c = options(&flags(&[(NODE_NAME, "n2")]))
            .expect("parse")
            .resolve(Some("worker-1".into()))
            .expect("valid");
        assert_eq!(c.node_name, "n2");
        let e = options(&[])
            .expect("parse")
            .resolve(None)
            .expect_err("no name");
        assert_eq!(e.option, NODE_NAME);
    }

    #[test]
    fn effective_rendering_is_sorted_by_field() {
        let c = resolve(&[("enable-l2-announcements", "true")]).expect("valid");
        let text = render_effective(&c.effective);
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
