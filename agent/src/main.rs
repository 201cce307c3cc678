//! l2announcer: the node agent binary. Thin: parses the command line and
//! hands over to the library's commands.

use std::process::ExitCode;

use l2announcer::{cli, commands, config::Config, run};

fn main() -> ExitCode {
    let matches = match cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::from(if e.exit_code() == 0 { 0 } else { 2 });
            }
            // One line naming the problem; the usage text is one --help away.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first}");
            return ExitCode::from(2);
        }
    };
    let Some((name, sub)) = matches.subcommand() else {
        return ExitCode::from(2);
    };
    match name {
        "version" => {
            println!("l2announcer {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "run" => match Config::resolve(&cli::raw_inputs(sub)) {
            Ok(config) => {
                run::init_logging(&config);
                match run::run(config) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = format!("{e:#}"), "agent failed");
                        eprintln!("l2announcer: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        "statedb" => ExitCode::from(commands::statedb(sub)),
        "config" => ExitCode::from(commands::config(sub)),
        "status" => ExitCode::from(commands::status(sub)),
        _ => ExitCode::from(2),
    }
}
