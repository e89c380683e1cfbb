//! A real etcd for tests: one member on loopback, in a temporary directory, killed when
//! dropped. The binary is `etcd` on the `PATH` (Debian's `etcd-server` package, which the
//! project's CI installs), or the one `STRATA_ETCD` names.
//!
//! Where there is none, [`EtcdServer::start`] returns `None` and the test says so on standard
//! error and passes; under CI (`CI` set) it panics instead, so a CI run never skips them.

// Only tests use it, and an etcd that cannot be started fails the test that needed it.
#![allow(clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start waits for etcd to report itself healthy.
const READY_WAIT: Duration = Duration::from_secs(20);

/// How many times [`EtcdServer::start`] starts etcd when it exits at once (a port taken).
const START_ATTEMPTS: u32 = 3;

/// Why etcd did not start.
#[derive(Debug)]
enum Failed {
    /// It exited before it was healthy: what it said.
    Exited(String),
    /// It ran, but was not healthy within [`READY_WAIT`]: what it said.
    NotHealthy(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Exited(why) => write!(f, "etcd exited at its start: {why}"),
            Failed::NotHealthy(said) => write!(
                f,
                "etcd did not become healthy within {READY_WAIT:?}; its last words: {said}"
            ),
        }
    }
}

/// A running one-member etcd (see the module docs).
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers `/health`; `None` when there is no etcd binary
    /// and not under CI.
    ///
    /// # Panics
    ///
    /// Under CI without an etcd binary, or when etcd does not become healthy.
    pub fn start() -> Option<EtcdServer> {
        let binary =
            std::env::var_os("STRATA_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from);
        let found = Command::new(&binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "no etcd binary ({}): CI must install it (Debian's etcd-server package)",
                binary.display()
            );
            eprintln!(
                "skipped: no etcd binary ({}); install Debian's etcd-server to run this test",
                binary.display()
            );
            return None;
        }
        Some(EtcdServer::start_on(binary, free_port()))
    }

    /// Starts `binary` with its client port at `client_port` (a free one, normally), and waits
    /// until it is healthy. A port can be taken between [`free_port`] finding it and etcd
    /// binding it (by another test's server, or a connection's own end): etcd then exits at
    /// once, and is started again on fresh ports and a fresh directory, up to
    /// [`START_ATTEMPTS`] times.
    fn start_on(binary: PathBuf, client_port: u16) -> EtcdServer {
        let mut server = EtcdServer {
            child: None,
            binary,
            dir: tempfile::tempdir().expect("a temporary directory for etcd"),
            client_port,
            peer_port: free_port(),
        };
        let mut attempt = 1;
        loop {
            match server.run() {
                Ok(()) => return server,
                Err(Failed::Exited(why)) if attempt < START_ATTEMPTS => {
                    eprintln!("etcd exited at its start ({why}); starting it on other ports");
                    attempt += 1;
                    server.dir = tempfile::tempdir().expect("a temporary directory for etcd");
                    server.client_port = free_port();
                    server.peer_port = free_port();
                }
                Err(failed) => panic!("{failed}"),
            }
        }
    }

    /// The client endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd with SIGKILL and waits for it to exit; its data stays for [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data and ports (after [`Self::kill`]).
    ///
    /// # Panics
    ///
    /// When etcd does not become healthy.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(failed) = self.run() {
            panic!("{failed}");
        }
    }

    /// Starts etcd on this server's ports and directory and waits until it is healthy; its
    /// standard error goes to `etcd.log` in the directory, quoted when it fails.
    fn run(&mut self) -> Result<(), Failed> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.binary)
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("member"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log()).expect("etcd's log file"))
            .spawn()
            .expect("etcd starts");
        let started = Instant::now();
        self.child = Some(child);
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("etcd's status"));
            if let Some(status) = exited {
                self.child = None;
                return Err(Failed::Exited(format!("{status}: {}", self.log_tail())));
            }
            if self.healthy() {
                return Ok(());
            }
            if started.elapsed() >= READY_WAIT {
                return Err(Failed::NotHealthy(self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last lines etcd wrote to its standard error.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Whether etcd answers its `/health` endpoint with a healthy member.
    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_whose_client_port_was_taken_meanwhile_runs_on_other_ports() {
        let Some(probe) = EtcdServer::start() else {
            return;
        };
        let binary = probe.binary.clone();
        drop(probe);
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let server = EtcdServer::start_on(binary, port);
        assert_ne!(server.client_port, port);
        assert!(server.healthy());
    }
}
