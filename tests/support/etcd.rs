//! Throwaway etcd clusters for the tests.
//!
//! `EtcdCluster::start(n)` runs `n` members of the machine's etcd (`LEASES_ETCD_BIN`,
//! else `etcd` on the `PATH`, as Debian's `etcd-server` package installs it) on
//! 127.0.0.1 and free ports, each with a data dir under one temp dir, and waits until
//! every member reports healthy. Members can be killed, stopped (SIGSTOP), continued and
//! restarted on the same ports and data. The cluster is killed and its dir removed when
//! dropped and, for the shared one, when the test process exits. A missing etcd is a
//! test failure, never a skip (scripts/test.sh installs it).
//!
//! Also what the etcd tests and the benchmark share: backend options and managers on a
//! cluster, etcd's auth switched on, a bare gRPC channel to a member, and an etcd lease
//! revoked behind its holder's back (what a resumed stale leader does on etcd 3.4).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Process ids and dirs of running members, to clean up at exit (statics are never
/// dropped).
static RUNNING: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

extern "C" fn kill_all_at_exit() {
    if let Ok(members) = RUNNING.lock() {
        for (pid, dir) in members.iter() {
            // SAFETY: sending a signal to a process id has no memory-safety preconditions.
            unsafe {
                libc::kill(*pid as i32, libc::SIGCONT);
                libc::kill(*pid as i32, libc::SIGKILL);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn etcd_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("LEASES_ETCD_BIN") {
        return PathBuf::from(bin);
    }
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.join("etcd"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "no etcd server found (looked for `etcd` on the PATH; set LEASES_ETCD_BIN, or \
             install Debian's `etcd-server` package: scripts/test.sh does so)"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// One HTTP/1.0 request to a member's client port; the body of the answer.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A running throwaway cluster.
pub struct EtcdCluster {
    bin: PathBuf,
    dir: PathBuf,
    members: Vec<Member>,
    token: String,
    /// Server certificate and key files: clients must use TLS.
    tls: Option<(PathBuf, PathBuf)>,
    /// More command-line arguments for every member.
    extra: Vec<String>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until all are healthy.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, None, &[])
    }

    /// Starts `n` members with these extra command-line arguments.
    #[allow(dead_code)]
    pub fn start_args(n: usize, extra: &[&str]) -> EtcdCluster {
        EtcdCluster::start_with(n, None, extra)
    }

    /// Starts `n` members that serve clients over TLS only, with this certificate and
    /// key (PEM), and waits until their client ports accept connections.
    pub fn start_tls(n: usize, cert_pem: &str, key_pem: &str) -> EtcdCluster {
        EtcdCluster::start_with(n, Some((cert_pem, key_pem)), &[])
    }

    fn start_with(n: usize, tls: Option<(&str, &str)>, extra: &[&str]) -> EtcdCluster {
        let bin = etcd_bin();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("leases-etcd-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let tls = tls.map(|(cert, key)| {
            let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            (c, k)
        });
        let mut cluster = EtcdCluster {
            bin,
            dir,
            members,
            token: format!("leases-{}-{stamp}", std::process::id()),
            tls,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        static HOOK: OnceLock<()> = OnceLock::new();
        HOOK.get_or_init(|| {
            // SAFETY: registering a plain extern "C" function with no captured state.
            unsafe { libc::atexit(kill_all_at_exit) };
        });
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy(Duration::from_secs(60));
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .unwrap();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let mut command = Command::new(&self.bin);
        if let Some((cert, key)) = &self.tls {
            command
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key);
        }
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // Elections within half a second; the smallest etcd lease is then 1 s.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd {}: {e}", self.bin.display()));
        RUNNING.lock().unwrap().push((child.id(), self.dir.clone()));
        self.members[i].child = Some(child);
    }

    /// Waits until every running member reports healthy (it has a leader).
    pub fn wait_healthy(&self, max: Duration) {
        let until = Instant::now() + max;
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            if self.tls.is_some() {
                // No plain-HTTP health check over TLS: wait for the port.
                while TcpStream::connect(("127.0.0.1", m.client)).is_err() {
                    assert!(
                        Instant::now() < until,
                        "etcd member {i} not listening within {max:?}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            loop {
                let body = http(m.client, "GET", "/health", "").unwrap_or_default();
                if body.contains("\"health\":\"true\"") {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "etcd member {i} not healthy within {max:?}: {body:?}; log in {}",
                    self.dir.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client))
            .collect()
    }

    /// The client ports of every member.
    pub fn client_ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The index of the current leader, asked of the running members.
    pub fn leader(&self) -> Option<usize> {
        let mut ids = vec![None; self.members.len()];
        let mut leader = None;
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let Some(body) = http(m.client, "POST", "/v3/maintenance/status", "{}") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            ids[i] = v["header"]["member_id"].as_str().map(str::to_string);
            if let Some(l) = v["leader"].as_str() {
                leader = Some(l.to_string());
            }
        }
        let leader = leader?;
        ids.iter()
            .position(|id| id.as_deref() == Some(leader.as_str()))
    }

    fn signal(&self, i: usize, sig: i32) {
        if let Some(child) = &self.members[i].child {
            // SAFETY: sending a signal to our own child has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// SIGKILLs member `i` (a crash).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let pid = child.id();
            // SAFETY: as above.
            unsafe {
                libc::kill(pid as i32, libc::SIGCONT);
                libc::kill(pid as i32, libc::SIGKILL);
            }
            let _ = child.wait();
            RUNNING.lock().unwrap().retain(|(p, _)| *p != pid);
        }
    }

    /// SIGSTOPs member `i`: it holds its connections but answers nothing (a partition).
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONTs member `i` after [`pause`](Self::pause).
    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// Starts member `i` again after [`kill`](Self::kill), on its ports and data.
    pub fn restart(&mut self, i: usize) {
        if self.members[i].child.is_none() {
            self.spawn(i);
        }
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Restarts every killed member and waits until all are healthy.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.restart(i);
        }
        self.wait_healthy(Duration::from_secs(60));
    }

    /// SIGKILLs member `i`, starts it again and waits until every member is healthy:
    /// with one member, a leader change (it elects itself in a new term).
    pub fn crash_and_restart(&mut self, i: usize) {
        self.kill(i);
        self.restart(i);
        self.wait_healthy(Duration::from_secs(30));
    }

    /// The current leader, waiting (up to 10 s) for one to be elected.
    pub async fn elected_leader(&self) -> usize {
        for _ in 0..200 {
            if let Some(l) = self.leader() {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no etcd leader within 10 s");
    }

    /// Switches etcd's auth on, with `user` as root (password `password`).
    pub fn enable_auth(&self, user: &str, password: &str) {
        let port = self.client_ports()[0];
        let add = format!(r#"{{"name":"{user}","password":"{password}"}}"#);
        let grant = format!(r#"{{"user":"{user}","role":"root"}}"#);
        for (path, body) in [
            ("/v3/auth/user/add", add.as_str()),
            ("/v3/auth/user/grant", grant.as_str()),
            ("/v3/auth/enable", "{}"),
        ] {
            let answer = http(port, "POST", path, body).unwrap_or_default();
            assert!(!answer.contains("\"error\""), "{path}: {answer}");
        }
    }

    /// Backend options for this cluster: every member, this key prefix, a 2 s request
    /// timeout.
    #[cfg(feature = "etcd")]
    pub fn options(&self, prefix: &str) -> leases::backend::EtcdOptions {
        leases::backend::EtcdOptions::new(self.endpoints())
            .prefix(prefix)
            .request_timeout(Duration::from_secs(2))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The endpoints of the shared test cluster: `LEASES_ETCD_ENDPOINTS` (comma-separated)
/// if set, else a throwaway 3-member cluster started once for this test process.
pub fn shared_endpoints() -> Vec<String> {
    static SHARED: OnceLock<(Vec<String>, Option<Mutex<EtcdCluster>>)> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("LEASES_ETCD_ENDPOINTS") {
            Ok(list) if !list.is_empty() => (list.split(',').map(str::to_string).collect(), None),
            _ => {
                let cluster = EtcdCluster::start(3);
                (cluster.endpoints(), Some(Mutex::new(cluster)))
            }
        })
        .0
        .clone()
}

/// A name unique to this test process, for keys and prefixes.
pub fn run_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        format!(
            "run{}x{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                % 1_000_000
        )
    })
    .clone()
}

/// A lease manager on etcd with these options and this shortest TTL.
#[cfg(feature = "etcd")]
pub async fn manager(
    options: leases::backend::EtcdOptions,
    min_ttl: Duration,
) -> leases::LeaseManager {
    leases::LeaseManager::builder()
        .min_ttl(min_ttl)
        .etcd(options)
        .start()
        .await
        .unwrap()
}

/// The token of a grant; panics at anything else.
#[cfg(feature = "etcd")]
pub fn granted(o: leases::backend::AcquireOutcome) -> u64 {
    match o {
        leases::backend::AcquireOutcome::Granted { token } => token,
        held => panic!("expected a grant, got {held:?}"),
    }
}

/// A bare gRPC channel to one member (no backend in between).
pub async fn channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Revokes, through the member at `endpoint`, the etcd lease that the lease key
/// `etcd_key` (granted with `token`) rides on, behind its holder's back: what a resumed
/// stale leader does on etcd without the fix for etcd #15247. The etcd lease's ID.
#[cfg(feature = "etcd")]
pub async fn revoke_behind_holder(endpoint: &str, etcd_key: Vec<u8>, token: u64) -> i64 {
    use leases::backend::etcd_wire as pb;
    let channel = channel(endpoint).await;
    let kv = pb::kv_client::KvClient::new(channel.clone())
        .range(pb::RangeRequest {
            key: etcd_key,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs
        .pop()
        .expect("the holder's key is in etcd");
    assert_eq!(kv.create_revision as u64, token);
    pb::lease_client::LeaseClient::new(channel)
        .lease_revoke(pb::LeaseRevokeRequest { id: kv.lease })
        .await
        .unwrap();
    kv.lease
}
