//! Reading what `tcpdump -w` wrote: the classic pcap format (microsecond
//! or nanosecond timestamps, either byte order), records as they are. Also
//! [`Tcpdump`], a capture running in a namespace until dropped.
//!
//! It is not pcapng and not a protocol decoder: callers parse the frames.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::netns::NetnsError;

/// Why a capture could not be read or started.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("not a pcap file (magic {0:08x})")]
    BadMagic(u32),
    #[error("pcap file is shorter than its header")]
    Truncated,
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("tcpdump did not report it was listening within {0:?}: {1}")]
    NotListening(Duration, String),
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Capture time, ns since the epoch.
    pub ts_ns: u64,
    /// Length on the wire.
    pub orig_len: u32,
    /// The captured bytes (possibly cut at the snap length).
    pub data: Vec<u8>,
}

/// A parsed capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Link type (1 = Ethernet).
    pub linktype: u32,
    pub packets: Vec<Packet>,
}

/// Parses a pcap file's bytes. A record cut short at the end (tcpdump
/// still writing) is left out.
pub fn parse(bytes: &[u8]) -> Result<Capture, PcapError> {
    if bytes.len() < 24 {
        return Err(PcapError::Truncated);
    }
    let magic_le = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let (little, nanos) = match magic_le {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        other => return Err(PcapError::BadMagic(other)),
    };
    let u32_at = |at: usize| {
        let b = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = u32_at(20);
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let secs = u64::from(u32_at(at));
        let frac = u64::from(u32_at(at + 4));
        let incl = u32_at(at + 8) as usize;
        let orig_len = u32_at(at + 12);
        let start = at + 16;
        let Some(end) = start.checked_add(incl).filter(|e| *e <= bytes.len()) else {
            break;
        };
        packets.push(Packet {
            ts_ns: secs * 1_000_000_000 + if nanos { frac } else { frac * 1_000 },
            orig_len,
            data: bytes[start..end].to_vec(),
        });
        at = end;
    }
    Ok(Capture { linktype, packets })
}

/// Reads and parses a pcap file.
pub fn read(path: &Path) -> Result<Capture, PcapError> {
    let bytes = std::fs::read(path).map_err(|source| PcapError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&bytes)
}

/// `tcpdump -i <if> -w <file> -U` running in a namespace; stopped (SIGTERM)
/// on drop.
#[derive(Debug)]
pub struct Tcpdump {
    child: Child,
    path: PathBuf,
}

impl Tcpdump {
    /// Starts tcpdump on `ifname` in the namespace `netns` (a name under
    /// /run/netns), writing every packet to `path` as it arrives, with an
    /// optional capture filter; returns once tcpdump says it is listening
    /// (or fails after `ready_timeout`).
    pub fn start(
        netns: &str,
        ifname: &str,
        path: &Path,
        filter: &[&str],
        ready_timeout: Duration,
    ) -> Result<Tcpdump, PcapError> {
        let file = path.to_string_lossy().into_owned();
        // -Z root: Debian's tcpdump otherwise drops to user tcpdump before
        // opening the output file.
        let mut args = vec!["-i", ifname, "-w", &file, "-U", "-n", "-Z", "root"];
        args.extend_from_slice(filter);
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", netns, "tcpdump"]).args(&args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| NetnsError::Spawn {
            command: format!("{cmd:?}"),
            source,
        })?;
        let stderr = child.stderr.take();
        let capture = Tcpdump {
            child,
            path: path.to_owned(),
        };
        let (tx, rx) = mpsc::channel::<String>();
        if let Some(stderr) = stderr {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let deadline = std::time::Instant::now() + ready_timeout;
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return Ok(capture),
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => return Err(PcapError::NotListening(ready_timeout, seen)),
            }
        }
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was captured so far (tcpdump flushes every packet with -U).
    pub fn read(&self) -> Result<Capture, PcapError> {
        read(&self.path)
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        // `ip netns exec` execs tcpdump, so this is tcpdump's pid.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of a child we spawned and have not
            // reaped yet (so the pid cannot have been reused).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_timestamp_precisions_and_byte_orders() {
        let mut le = Vec::new();
        le.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        le.extend_from_slice(&[2, 0, 4, 0]);
        le.extend_from_slice(&[0; 8]);
        le.extend_from_slice(&65535u32.to_le_bytes());
        le.extend_from_slice(&1u32.to_le_bytes());
        for (i, data) in [&[1u8, 2, 3][..], &[4, 5][..]].iter().enumerate() {
            le.extend_from_slice(&(10 + i as u32).to_le_bytes());
            le.extend_from_slice(&7u32.to_le_bytes());
            le.extend_from_slice(&(data.len() as u32).to_le_bytes());
            le.extend_from_slice(&60u32.to_le_bytes());
            le.extend_from_slice(data);
        }
        // A record still being written is left out.
        le.extend_from_slice(&[0; 10]);
        let cap = parse(&le).expect("parse");
        assert_eq!(cap.linktype, 1);
        assert_eq!(cap.packets.len(), 2);
        assert_eq!(cap.packets[0].ts_ns, 10_000_007_000);
        assert_eq!(cap.packets[1].data, vec![4, 5]);
        assert_eq!(cap.packets[1].orig_len, 60);

        let mut be = Vec::new();
        be.extend_from_slice(&0xa1b2_3c4du32.to_be_bytes());
        be.extend_from_slice(&[0; 16]);
        be.extend_from_slice(&1u32.to_be_bytes());
        be.extend_from_slice(&3u32.to_be_bytes());
        be.extend_from_slice(&9u32.to_be_bytes());
        be.extend_from_slice(&1u32.to_be_bytes());
        be.extend_from_slice(&1u32.to_be_bytes());
        be.push(0xee);
        let cap = parse(&be).expect("parse");
        assert_eq!(cap.packets[0].ts_ns, 3_000_000_009);
        assert_eq!(cap.packets[0].data, vec![0xee]);

        assert!(matches!(parse(&[0; 24]), Err(PcapError::BadMagic(0))));
        assert!(matches!(parse(&[0; 3]), Err(PcapError::Truncated)));
    }
}
