//! The agent's local API: HTTP/1.1 with JSON bodies on a unix socket.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/healthz` | `ok` |
//! | `GET /v1/config` | the effective configuration (value and source per key) |
//! | `GET /v1/status` | node, version, uptime, rows per table |
//! | `GET /v1/statedb` | the table names |
//! | `GET /v1/statedb/{table}` | [`TableDump`]: header, then cells and JSON per row |
//! | `GET /v1/statedb/{table}?watch=true` | newline-delimited [`ChangeEvent`]s, current rows first |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::config::{Config, EffectiveValue};
use crate::tables;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    config: Arc<Config>,
    db: statedb::Db,
    started: Instant,
    /// Turns true at shutdown; open watch streams end with it.
    stop: watch::Receiver<bool>,
}

impl ApiState {
    pub fn new(config: Arc<Config>, db: statedb::Db, stop: watch::Receiver<bool>) -> Self {
        ApiState {
            config,
            db,
            started: Instant::now(),
            stop,
        }
    }
}

/// Body of `GET /v1/config`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigDump {
    pub effective: BTreeMap<String, EffectiveValue>,
}

/// Body of `GET /v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusDump {
    pub node: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub l2_announcements_enabled: bool,
    pub tables: BTreeMap<String, usize>,
}

/// Body of `GET /v1/statedb/{table}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TableDump {
    pub table: String,
    pub header: Vec<String>,
    pub rows: Vec<DumpRow>,
}

/// One row: its CLI cells and its full JSON form.
#[derive(Debug, Serialize, Deserialize)]
pub struct DumpRow {
    pub cells: Vec<String>,
    pub object: serde_json::Value,
}

/// One line of a watch stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub revision: u64,
    pub deleted: bool,
    pub cells: Vec<String>,
    pub object: serde_json::Value,
}

/// Error body: a message, and the known tables where that helps.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known: Vec<String>,
}

fn error(status: StatusCode, message: String, known: Vec<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message,
            known,
        }),
    )
        .into_response()
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/healthz", get(|| async { "ok" }))
        .route("/v1/config", get(config_handler))
        .route("/v1/status", get(status_handler))
        .route(
            "/v1/statedb",
            get(|| async { Json(tables::NAMES.to_vec()) }),
        )
        .route("/v1/statedb/{table}", get(table_handler))
        .with_state(state)
}

/// Serves until `stop` turns true; open watch streams end with it.
pub async fn serve(listener: UnixListener, state: ApiState) -> std::io::Result<()> {
    let mut stop = state.stop.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

async fn config_handler(State(state): State<ApiState>) -> Json<ConfigDump> {
    Json(ConfigDump {
        effective: state.config.effective.clone(),
    })
}

async fn status_handler(State(state): State<ApiState>) -> Response {
    let mut counts = BTreeMap::new();
    for name in tables::NAMES {
        match tables::dump(&state.db, name) {
            Ok(dump) => {
                counts.insert(name.to_string(), dump.rows.len());
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e, vec![]),
        }
    }
    Json(StatusDump {
        node: state.config.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: state.started.elapsed().as_secs(),
        l2_announcements_enabled: state.config.enable_l2_announcements,
        tables: counts,
    })
    .into_response()
}

#[derive(Debug, Deserialize)]
struct TableQuery {
    #[serde(default)]
    watch: bool,
}

async fn table_handler(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<TableQuery>,
) -> Response {
    let Some(table) = tables::get(&state.db, &name).filter(|_| tables::is_known(&name)) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown table {name:?}"),
            tables::NAMES.iter().map(|s| s.to_string()).collect(),
        );
    };
    if query.watch {
        return watch_table(state, table);
    }
    match tables::dump(&state.db, &name) {
        Ok(dump) => Json(dump).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e, vec![]),
    }
}

/// Streams changes as JSON lines until the client goes away.
fn watch_table(state: ApiState, table: Arc<dyn statedb::AnyTable>) -> Response {
    let mut changes = match table.changes(&state.db) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), vec![]),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    let mut stop = state.stop.clone();
    tokio::spawn(async move {
        loop {
            let batch = match changes.next_batch() {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            for change in batch {
                let event = ChangeEvent {
                    revision: change.revision,
                    deleted: change.deleted,
                    cells: change.cells,
                    object: change.json,
                };
                let mut line = serde_json::to_string(&event).unwrap_or_default();
                line.push('\n');
                if tx.send(Ok(line)).await.is_err() {
                    return; // client gone: dropping `changes` unregisters it
                }
            }
            tokio::select! {
                _ = changes.wait() => {}
                _ = tx.closed() => return,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), vec![]))
}
