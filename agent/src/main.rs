//! l2announcer: the node agent binary. Thin: parses the command line and
//! hands over to the library's commands.

use std::process::ExitCode;

use l2announcer::cli::{self, Command};
use l2announcer::{commands, config, run};

fn main() -> ExitCode {
    // glibc gives every thread that allocates an arena of its own (sled's
    // IO threads, tokio's workers, actix): with thousands of Services the
    // freed memory stays spread over them; nearly all allocation happens
    // on the actix thread, so one arena does. And a fixed mmap threshold:
    // glibc raises it (up to 32 MiB) after freeing a large block, and the
    // next large buffers (a list of thousands of Services, a watch burst)
    // then land in the heap, which stays fragmented after they are freed.
    // SAFETY: mallopt only sets allocator parameters; called before any
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(cli::refuse(&e)),
    };
    match cli.command {
        Command::Version => {
            println!("l2announcer {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(options) => match options.resolve(config::node_name_fallback()) {
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
                ExitCode::from(commands::EXIT_USAGE)
            }
        },
        Command::Statedb(args) => ExitCode::from(commands::statedb(&args)),
        Command::Config(args) => ExitCode::from(commands::config(args)),
        Command::Status(args) => ExitCode::from(commands::status(&args)),
    }
}
