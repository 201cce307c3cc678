//! A plain blocking HTTP GET over hyper's HTTP/1 client: one connection per
//! request, for the agents' `/metrics` and `/readyz`, the lab's HTTP servers
//! behind a VIP and Prometheus' query API.
//!
//! The connection is made on the calling thread (a current-thread runtime
//! of its own), so a thread that entered a network namespace connects from
//! there. It must not be called from inside an async runtime. It is not a
//! general client: no TLS, no redirects, no connection reuse.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("GET http://{addr}{path}: {source}")]
    Request {
        addr: SocketAddr,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("GET http://{addr}{path}: bad request: {message}")]
    BadRequest {
        addr: SocketAddr,
        path: String,
        message: String,
    },
    #[error("GET http://{addr}{path}: no answer within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        path: String,
        timeout: Duration,
    },
    #[error("GET http://{addr}{path}: status {status}: {body:.120}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
        body: String,
    },
}

/// GET `http://addr{path}` (path with its query, already encoded); the
/// body of a 200 answer as text. `timeout` covers connecting and reading.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, HttpError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HttpError::Runtime)?;
    let timed_out = || HttpError::Timeout {
        addr,
        path: path.to_string(),
        timeout,
    };
    rt.block_on(async {
        tokio::time::timeout(timeout, get_async(addr, path))
            .await
            .map_err(|_| timed_out())?
    })
}

async fn get_async(addr: SocketAddr, path: &str) -> Result<String, HttpError> {
    let request_err = |source| HttpError::Request {
        addr,
        path: path.to_string(),
        source,
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| HttpError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(request_err)?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| HttpError::BadRequest {
            addr,
            path: path.to_string(),
            message: e.to_string(),
        })?;
    let resp = sender.send_request(req).await.map_err(request_err)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(request_err)?
        .to_bytes();
    driver.abort();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(HttpError::Status {
            addr,
            path: path.to_string(),
            status,
            body,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A one-shot server answering `answer` to the first request.
    fn serve_once(answer: &'static str) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn returns_the_body_of_a_200_and_an_error_otherwise() {
        let ok =
            serve_once("HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n");
        assert_eq!(
            get(ok, "/x?y=1", Duration::from_secs(5)).expect("get"),
            "hello\n"
        );
        let missing = serve_once(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope",
        );
        let err = get(missing, "/", Duration::from_secs(5)).expect_err("404");
        assert!(
            matches!(err, HttpError::Status { status: 404, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_closed_port_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let err = get(addr, "/", Duration::from_secs(5)).expect_err("closed");
        assert!(matches!(err, HttpError::Connect { .. }), "{err}");
    }
}
