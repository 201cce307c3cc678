//! The backend behind the VIPs: in every node namespace a thread serving
//! `served by node-N` over HTTP/1.0 on port 80 (IPv4 and IPv6), so that the
//! client can see which node a VIP leads to. Minimal on purpose: it answers
//! every request with that one body and closes the connection.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{LabError, io_err};
use crate::netns::enter_path;

/// The HTTP servers of a lab's nodes; stopped by [`Backends::stop`].
pub(super) struct Backends {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backends {
    /// Starts one server per (namespace, node name); returns once all listen.
    pub(super) fn start<'a>(
        nodes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Backends, LabError> {
        let mut servers = Backends {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for (netns, node) in nodes {
            let t = serve(netns.to_string(), node.to_string(), servers.stop.clone())?;
            servers.threads.push(t);
        }
        Ok(servers)
    }

    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(netns: String, node: String, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>, LabError> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), LabError>>();
    let handle = std::thread::spawn(move || {
        let setup = enter_path(&netns, &Path::new("/run/netns").join(&netns))
            .map_err(LabError::from)
            .and_then(|()| {
                // [::] takes IPv4 too (v4-mapped) unless bindv6only is set.
                let l = TcpListener::bind("[::]:80").map_err(io_err("binding [::]:80"))?;
                l.set_nonblocking(true).map_err(io_err("nonblocking"))?;
                Ok(l)
            });
        let listener = match setup {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let body = format!("served by {node}\n");
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                // Accept is non-blocking so the stop flag is seen.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LabError::State(
            "the HTTP server did not listen within 5 s".into(),
        )),
    }
}
