//! The server processes the service section measures: ours (`leases serve` on the
//! memory backend) and the floor (this binary with `--service-floor`), each reached
//! over 127.0.0.1, with the resident bytes and CPU time of its process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use tonic::transport::Channel;

/// A server process of ours or the floor's, killed when dropped.
pub(crate) struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(mut command: Command, line: &str) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("the server starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(a) = l.strip_prefix(line) {
                        break a.trim().parse().expect("an address");
                    }
                }
                _ => panic!("the server exited before it printed `{line}`"),
            }
        };
        Server { child, addr }
    }

    pub(crate) fn ours() -> Server {
        let mut c = Command::new(env!("CARGO_BIN_EXE_leases"));
        c.args(["serve", "--bind", "127.0.0.1:0"]);
        Server::start(c, "leases serve: listening on ")
    }

    pub(crate) fn floor() -> Server {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.arg("--service-floor");
        Server::start(c, "floor: listening on ")
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("the server answers")
    }

    /// Resident bytes of the server process.
    pub(crate) fn rss(&self) -> u64 {
        let statm =
            std::fs::read_to_string(format!("/proc/{}/statm", self.child.id())).unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
    }

    /// CPU seconds (user + system) the server process has used.
    pub(crate) fn cpu(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is the 14th
        // field of the line, stime the 15th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (ticks(11) + ticks(12)) / hz
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
