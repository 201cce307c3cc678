//! HTTP over the agent's unix socket, for the query commands (`statedb`,
//! `config`, `status`).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why a query to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {path}: {source} (is `l2announcer run` running? use --api-socket, or --db for a stopped agent's database)"
    )]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent API error: {0}")]
    Http(#[from] hyper::Error),
    #[error("agent API error: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("agent answered {status}: {body}")]
    Status { status: StatusCode, body: String },
}

/// One request's response, body still streaming.
pub struct Response {
    pub status: StatusCode,
    pub body: Incoming,
}

/// Sends `GET path` to the agent listening on `socket`.
pub async fn get(socket: &Path, path: &str) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::NotRunning {
            path: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection ends when the response body is dropped; errors
        // after that point concern nobody.
        let _ = conn.await;
    });
    let req = Request::get(path)
        .header("host", "l2announcer")
        .body(Empty::<Bytes>::new())?;
    let res = sender.send_request(req).await?;
    Ok(Response {
        status: res.status(),
        body: res.into_body(),
    })
}

/// Sends `GET path` and collects the whole body; non-2xx is an error.
pub async fn get_bytes(socket: &Path, path: &str) -> Result<Bytes, ClientError> {
    let res = get(socket, path).await?;
    let body = res.body.collect().await?.to_bytes();
    if !res.status.is_success() {
        return Err(ClientError::Status {
            status: res.status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    Ok(body)
}
