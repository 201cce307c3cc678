//! The command line: the subcommands and their arguments as clap derive
//! types, the environment variable of every option, and how a refused
//! command line is reported. The options themselves are
//! [`crate::config::Config`]'s fields; this module does not resolve them.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::config::{self, API_SOCKET, ConfigError, DEFAULT_API_SOCKET, Options};

/// Announces Kubernetes Service IPs on a layer-2 network (ARP/NDP from eBPF)
#[derive(Debug, Parser)]
#[command(name = "l2announcer", version, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the agent
    Run(Options),
    /// Show a state table of the running agent (or of a stopped agent's --db)
    Statedb(StatedbArgs),
    /// Print the effective configuration of the running agent
    Config(ConfigArgs),
    /// Print a summary of the running agent
    Status(StatusArgs),
    /// Print the version
    Version,
}

/// `l2announcer statedb <table> [-o table|json] [--watch] [--db PATH]`.
#[derive(Debug, Args)]
pub struct StatedbArgs {
    /// devices, l2-announce, leases or policies
    #[arg(value_name = "TABLE")]
    pub table: String,
    #[command(flatten)]
    pub format: OutputFormat,
    /// Keep printing changes
    #[arg(short, long)]
    pub watch: bool,
    /// Read the database files of a stopped agent instead
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub socket: AgentSocket,
}

/// `l2announcer config [--all] [--local] [-o json] [options]`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print every option, not only those that differ from the default
    #[arg(long)]
    pub all: bool,
    /// Resolve the options given here (flags, env, --config-dir) instead of asking the agent
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub format: OutputFormat,
    #[command(flatten)]
    pub options: Options,
}

/// `l2announcer status [-o json]`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub format: OutputFormat,
    #[command(flatten)]
    pub socket: AgentSocket,
}

/// Output formats of the query commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct OutputFormat {
    /// Output format
    #[arg(short, long, value_name = "FORMAT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl OutputFormat {
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }
}

/// Where the query commands find the running agent.
#[derive(Debug, Args)]
pub struct AgentSocket {
    /// Unix socket of the running agent
    #[arg(long = API_SOCKET, value_name = "PATH", default_value = DEFAULT_API_SOCKET,
        value_parser = config::value::non_empty_path)]
    pub api_socket: PathBuf,
}

/// The whole command tree: the derive types, with every option (wherever a
/// subcommand takes it) given its environment variable and its shape.
pub fn command() -> clap::Command {
    let keys = config::option_keys();
    Cli::command().mut_subcommands(|sub| {
        sub.mut_args(|arg| match arg.get_long() {
            Some(key) if keys.iter().any(|k| k == key) => {
                let env = config::env_name(key);
                config::shape(arg).env(env).hide_env_values(true)
            }
            _ => arg,
        })
    })
}

/// Parses a command line (program name first).
pub fn parse<I, T>(argv: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::from_arg_matches(&command().try_get_matches_from(argv)?)
}

/// Reports a refused command line and returns the exit code: help and
/// version are printed whole (0); a bad option value is one line naming the
/// option and its rule, any other mistake the first line of clap's message
/// (the usage text is one --help away), both 2.
pub fn refuse(e: &clap::Error) -> u8 {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.exit_code() == 0 { 0 } else { 2 };
    }
    match ConfigError::from_clap(e, &command()) {
        Some(refused) => eprintln!("{refused}"),
        None => {
            let rendered = e.render().to_string();
            eprintln!("{}", rendered.lines().next().unwrap_or("invalid arguments"));
        }
    }
    2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_well_formed() {
        command().debug_assert();
    }

    fn run_options(args: &[&str]) -> Options {
        let argv = ["l2announcer", "run"].iter().chain(args);
        match parse(argv).expect("parse").command {
            Command::Run(options) => options,
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn bool_flags_alone_mean_true() {
        let c = run_options(&["--enable-l2-announcements"])
            .resolve(Some("host-a".into()))
            .expect("valid");
        assert!(c.enable_l2_announcements);
        assert_eq!(c.effective["enable-l2-announcements"].value, "true");
        let c = run_options(&["--enable-l2-announcements=false"])
            .resolve(Some("host-a".into()))
            .expect("valid");
        assert!(!c.enable_l2_announcements);
        // A bool's value must be joined with `=`: a separate word is not it.
        assert!(parse(["l2announcer", "run", "--enable-l2-announcements", "false"]).is_err());
    }

    #[test]
    fn values_may_start_with_a_hyphen() {
        let e = parse(["l2announcer", "run", "--k8s-client-burst", "-2"]).expect_err("refused");
        let refused = ConfigError::from_clap(&e, &command()).expect("an option's rule");
        assert_eq!(refused.option, "k8s-client-burst");
    }

    #[test]
    fn every_option_has_its_environment_variable() {
        let cmd = command();
        let run = cmd.find_subcommand("run").expect("run");
        for arg in run.get_arguments().filter(|a| a.get_long().is_some()) {
            let key = arg.get_long().expect("long");
            if key == "help" {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(env, Some(config::env_name(key)), "{key}");
        }
        let statedb = cmd.find_subcommand("statedb").expect("statedb");
        let socket = statedb
            .get_arguments()
            .find(|a| a.get_long() == Some(API_SOCKET))
            .expect("socket");
        assert_eq!(
            socket.get_env().map(|e| e.to_string_lossy().into_owned()),
            Some("L2ANNOUNCER_API_SOCKET".to_string())
        );
    }

    #[test]
    fn unknown_option_is_a_usage_error() {
        let e = parse(["l2announcer", "run", "--no-such-thing"]).expect_err("unknown");
        assert_eq!(e.exit_code(), 2);
        assert!(ConfigError::from_clap(&e, &command()).is_none());
    }
}
