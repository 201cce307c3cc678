//! `test-apiserver`: runs the in-memory test Kubernetes API server
//! (`kube_test_apiserver`) on an address, writes a kubeconfig for it and
//! prints its URL on stdout. Runs until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kube_test_apiserver::TestApiServer;

#[derive(Parser)]
#[command(about = "In-memory Kubernetes API server for tests and the lab")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at the server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let server = TestApiServer::start(args.listen)
        .await
        .context("starting the test API server")?;
    if let Some(path) = &args.kubeconfig {
        server
            .write_kubeconfig(path)
            .with_context(|| format!("writing kubeconfig {}", path.display()))?;
    }
    println!("{}", server.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    server.shutdown();
    Ok(())
}
