//! The query commands: `statedb`, `config`, `status`. Each returns the
//! process exit code: 0 done, 1 the agent could not answer, 2 bad usage.

use std::io::Write;
use std::path::Path;

use http_body_util::BodyExt;

use crate::api::{ChangeEvent, ConfigDump, StatusDump, TableDump};
use crate::cli::{ConfigArgs, StatedbArgs, StatusArgs};
use crate::client::{self, ClientError};
use crate::config::{self, Source};
use crate::tables;

/// Exit codes of the query commands.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn fail(e: impl std::fmt::Display) -> u8 {
    eprintln!("l2announcer: {e}");
    EXIT_FAILED
}

/// `l2announcer statedb <table> [-o table|json] [--watch] [--db PATH]`.
pub fn statedb(args: &StatedbArgs) -> u8 {
    let name = args.table.as_str();
    if !tables::is_known(name) {
        eprintln!(
            "l2announcer: unknown table {name:?}; known tables: {}",
            tables::NAMES.join(", ")
        );
        return EXIT_USAGE;
    }
    let json = args.format.json();
    let watch = args.watch;
    if let Some(db_path) = &args.db {
        if watch {
            eprintln!("l2announcer: --watch needs the running agent; it cannot be used with --db");
            return EXIT_USAGE;
        }
        return statedb_from_files(db_path, name, json);
    }
    let socket = &args.socket.api_socket;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    rt.block_on(async {
        let result = if watch {
            watch_remote(socket, name, json).await
        } else {
            dump_remote(socket, name, json).await
        };
        match result {
            Ok(()) => EXIT_OK,
            Err(e) => fail(e),
        }
    })
}

fn statedb_from_files(path: &Path, name: &str, json: bool) -> u8 {
    if !path.exists() {
        return fail(format!("no database at {}", path.display()));
    }
    let db = match tables::open_existing(path) {
        Ok(db) => db,
        Err(e) => return fail(e),
    };
    match tables::dump(&db, name) {
        Ok(dump) => print_dump(&dump, json),
        Err(e) => fail(e),
    }
}

fn print_dump(dump: &TableDump, json: bool) -> u8 {
    let text = if json {
        let objects: Vec<&serde_json::Value> = dump.rows.iter().map(|r| &r.object).collect();
        match serde_json::to_string_pretty(&objects) {
            Ok(t) => t + "\n",
            Err(e) => return fail(e),
        }
    } else {
        let rows: Vec<Vec<String>> = dump.rows.iter().map(|r| r.cells.clone()).collect();
        statedb::render_table(&dump.header, &rows)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()) {
        Ok(()) => EXIT_OK,
        // A closed pipe (`| head`) is not the agent's failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => fail(e),
    }
}

async fn dump_remote(socket: &Path, name: &str, json: bool) -> Result<(), ClientError> {
    let body = client::get_bytes(socket, &format!("/v1/statedb/{name}")).await?;
    let dump: TableDump = serde_json::from_slice(&body).map_err(|e| ClientError::Status {
        status: hyper::StatusCode::OK,
        body: format!("unreadable answer: {e}"),
    })?;
    print_dump(&dump, json);
    Ok(())
}

async fn watch_remote(socket: &Path, name: &str, json: bool) -> Result<(), ClientError> {
    let res = client::get(socket, &format!("/v1/statedb/{name}?watch=true")).await?;
    if !res.status.is_success() {
        let body = res.body.collect().await?.to_bytes();
        return Err(ClientError::Status {
            status: res.status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    if !json && let Some(header) = tables::header(name) {
        println!("# Rev Op {}", header.join("  "));
    }
    let mut body = res.body;
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let mut out = std::io::stdout().lock();
            let written = if json {
                out.write_all(&line)
            } else {
                match serde_json::from_slice::<ChangeEvent>(&line) {
                    Ok(ev) => writeln!(
                        out,
                        "{} {} {}",
                        ev.revision,
                        if ev.deleted { "-" } else { "+" },
                        ev.cells.join("  ")
                    ),
                    Err(_) => continue,
                }
            };
            if written.and_then(|()| out.flush()).is_err() {
                return Ok(()); // stdout closed: stop watching
            }
        }
    }
    Ok(())
}

/// `l2announcer config [--all] [--local] [-o json]`.
pub fn config(args: ConfigArgs) -> u8 {
    let all = args.all;
    let json = args.format.json();
    let effective = if args.local {
        match args.options.resolve(config::node_name_fallback()) {
            Ok(c) => c.effective,
            Err(e) => {
                eprintln!("{e}");
                return EXIT_USAGE;
            }
        }
    } else {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return fail(e),
        };
        let answer = rt.block_on(client::get_bytes(args.options.api_socket(), "/v1/config"));
        match answer.map(|b| serde_json::from_slice::<ConfigDump>(&b)) {
            Ok(Ok(dump)) => dump.effective,
            Ok(Err(e)) => return fail(format!("unreadable answer: {e}")),
            Err(e) => return fail(e),
        }
    };
    let shown: std::collections::BTreeMap<_, _> = effective
        .into_iter()
        .filter(|(_, v)| all || v.source != Source::Default)
        .collect();
    if json {
        match serde_json::to_string_pretty(&shown) {
            Ok(t) => println!("{t}"),
            Err(e) => return fail(e),
        }
    } else {
        print!("{}", config::render_effective(&shown));
    }
    EXIT_OK
}

/// `l2announcer status [-o json]`.
pub fn status(args: &StatusArgs) -> u8 {
    let socket = &args.socket.api_socket;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let status = match rt
        .block_on(client::get_bytes(socket, "/v1/status"))
        .map(|b| serde_json::from_slice::<StatusDump>(&b))
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(format!("unreadable answer: {e}")),
        Err(e) => return fail(e),
    };
    if args.format.json() {
        match serde_json::to_string_pretty(&status) {
            Ok(t) => println!("{t}"),
            Err(e) => return fail(e),
        }
        return EXIT_OK;
    }
    println!("Node:                 {}", status.node);
    println!("Version:              {}", status.version);
    println!("Uptime:               {}s", status.uptime_seconds);
    println!(
        "L2 announcements:     {}",
        if status.l2_announcements_enabled {
            "enabled"
        } else {
            "disabled"
        }
    );
    for (table, rows) in &status.tables {
        println!("Table {table:<15} {rows} rows");
    }
    EXIT_OK
}
