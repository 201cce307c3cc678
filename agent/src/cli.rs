//! The command line: clap definitions built from the option table in
//! [`crate::config`], and the conversion of matches into [`RawInputs`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command, parser::ValueSource};

use crate::config::{self, Kind, OPTIONS, RawInputs};

/// Output formats of the query commands.
pub const OUTPUTS: [&str; 2] = ["table", "json"];

fn option_args() -> Vec<Arg> {
    let mut args: Vec<Arg> = OPTIONS
        .iter()
        .map(|spec| {
            let help = format!(
                "{} [default: {}] [env: {}]",
                spec.help,
                if spec.default.is_empty() {
                    "\"\""
                } else {
                    spec.default
                },
                config::env_name(spec.key)
            );
            let arg = Arg::new(spec.key)
                .long(spec.key)
                .value_name(match spec.kind {
                    Kind::Bool => "BOOL",
                    Kind::Duration => "DURATION",
                    Kind::Float | Kind::Int => "NUMBER",
                    Kind::Text => "VALUE",
                    Kind::List => "LIST",
                })
                .help(help)
                .action(ArgAction::Set);
            match spec.kind {
                // `--enable-x` alone means true; `--enable-x=false` is explicit.
                Kind::Bool => arg
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true"),
                _ => arg.allow_hyphen_values(true),
            }
        })
        .collect();
    args.push(
        Arg::new(config::CONFIG_DIR)
            .long(config::CONFIG_DIR)
            .value_name("DIR")
            .value_parser(clap::value_parser!(PathBuf))
            .help(format!(
                "Directory with one file per option key (a mounted ConfigMap) [env: {}]",
                config::env_name(config::CONFIG_DIR)
            )),
    );
    args
}

fn socket_arg() -> Arg {
    Arg::new("api-socket")
        .long("api-socket")
        .value_name("PATH")
        .help(format!(
            "Unix socket of the running agent [default: {}] [env: {}]",
            crate::config::OPTIONS
                .iter()
                .find(|o| o.key == "api-socket")
                .map(|o| o.default)
                .unwrap_or_default(),
            config::env_name("api-socket")
        ))
}

fn output_arg() -> Arg {
    Arg::new("output")
        .short('o')
        .long("output")
        .value_name("FORMAT")
        .value_parser(OUTPUTS)
        .default_value("table")
        .help("Output format")
}

/// The whole command tree.
pub fn command() -> Command {
    Command::new("l2announcer")
        .about("Announces Kubernetes Service IPs on a layer-2 network (ARP/NDP from eBPF)")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("run")
                .about("Run the agent")
                .args(option_args()),
        )
        .subcommand(
            Command::new("statedb")
                .about("Show a state table of the running agent (or of a stopped agent's --db)")
                .arg(
                    Arg::new("table")
                        .required(true)
                        .value_name("TABLE")
                        .help("devices, l2-announce, leases or policies"),
                )
                .arg(output_arg())
                .arg(
                    Arg::new("watch")
                        .short('w')
                        .long("watch")
                        .action(ArgAction::SetTrue)
                        .help("Keep printing changes"),
                )
                .arg(
                    Arg::new("db")
                        .long("db")
                        .value_name("PATH")
                        .value_parser(clap::value_parser!(PathBuf))
                        .help("Read the database files of a stopped agent instead"),
                )
                .arg(socket_arg()),
        )
        .subcommand(
            Command::new("config")
                .about("Print the effective configuration of the running agent")
                .arg(
                    Arg::new("all")
                        .long("all")
                        .action(ArgAction::SetTrue)
                        .help("Print every option, not only those that differ from the default"),
                )
                .arg(
                    Arg::new("local")
                        .long("local")
                        .action(ArgAction::SetTrue)
                        .help("Resolve the options given here (flags, env, --config-dir) instead of asking the agent"),
                )
                .arg(output_arg())
                .args(option_args()),
        )
        .subcommand(
            Command::new("status")
                .about("Print a summary of the running agent")
                .arg(output_arg())
                .arg(socket_arg()),
        )
        .subcommand(Command::new("version").about("Print the version"))
}

/// Collects flags given on the command line (not defaults) and the process
/// environment into the inputs of [`config::Config::resolve`].
pub fn raw_inputs(matches: &ArgMatches) -> RawInputs {
    let mut flags = BTreeMap::new();
    for spec in OPTIONS {
        if matches.value_source(spec.key) == Some(ValueSource::CommandLine)
            && let Some(v) = matches.get_one::<String>(spec.key)
        {
            flags.insert(spec.key.to_string(), v.clone());
        }
    }
    RawInputs {
        flags,
        env: std::env::vars().collect(),
        config_dir: matches.get_one::<PathBuf>(config::CONFIG_DIR).cloned(),
        host_name: host_name(),
    }
}

/// The socket a query command talks to: flag, then env, then the default.
pub fn api_socket(matches: &ArgMatches) -> PathBuf {
    // `config` declares api-socket among the run options, `statedb` and
    // `status` on its own; both hold it as a string.
    if let Ok(Some(p)) = matches.try_get_one::<String>("api-socket") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var(config::env_name("api-socket"))
        && !p.is_empty()
    {
        return PathBuf::from(p);
    }
    PathBuf::from(
        OPTIONS
            .iter()
            .find(|o| o.key == "api-socket")
            .map(|o| o.default)
            .unwrap_or_default(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ArgMatches, clap::Error> {
        command().try_get_matches_from(args)
    }

    #[test]
    fn command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn bool_flags_alone_mean_true() {
        let m = parse(&["l2announcer", "run", "--enable-l2-announcements"]).expect("parse");
        let (_, run) = m.subcommand().expect("run");
        let raw = raw_inputs(run);
        assert_eq!(raw.flags["enable-l2-announcements"], "true");
        let m = parse(&["l2announcer", "run", "--enable-l2-announcements=false"]).expect("parse");
        let (_, run) = m.subcommand().expect("run");
        assert_eq!(raw_inputs(run).flags["enable-l2-announcements"], "false");
    }

    #[test]
    fn only_given_flags_are_collected() {
        let m = parse(&[
            "l2announcer",
            "run",
            "--l2-announcements-lease-duration",
            "3s",
            "--config-dir",
            "/etc/l2",
        ])
        .expect("parse");
        let (_, run) = m.subcommand().expect("run");
        let raw = raw_inputs(run);
        assert_eq!(raw.flags.len(), 1);
        assert_eq!(raw.flags["l2-announcements-lease-duration"], "3s");
        assert_eq!(raw.config_dir, Some(PathBuf::from("/etc/l2")));
    }

    #[test]
    fn unknown_option_is_an_error() {
        let e = parse(&["l2announcer", "run", "--no-such-thing"]).expect_err("unknown");
        assert_eq!(e.exit_code(), 2);
    }
}
