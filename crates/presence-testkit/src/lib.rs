//! Real Redis servers for tests, started and stopped by the test itself.
//!
//! Every server listens on a free loopback port picked at start, in a
//! temporary directory of its own, and is killed when its handle drops, so
//! tests never depend on a server they did not start nor on a fixed port.
//!
//! - [`RedisServer`]: one standalone `redis-server`; [`RedisServer::start_tls`]
//!   also serves TLS (`rediss://`) with a certificate from a CA made for it
//!   (`openssl` must be on the `PATH`).
//! - [`RedisCluster`]: a Redis Cluster of N masters, created with
//!   `redis-cli --cluster create`.
//!
//! Servers run in Docker containers through testcontainers when a Docker
//! engine answers and the image [`IMAGE`] exists (the test command builds it
//! from the installed `redis-server`, as no image registry is reachable);
//! otherwise as local `redis-server` processes. [`Backend::current`] says
//! which, and `PRESENCE_TEST_BACKEND=local|docker` forces one. Containers use
//! the host network and listen on loopback only. `redis-cli` must be on the
//! `PATH` either way.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use testcontainers::core::{Mount, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

/// The local image the Docker backend runs (`name:tag`).
pub const IMAGE: (&str, &str) = ("presence-redis", "local");

/// Where servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Docker containers, through testcontainers.
    Docker,
    /// Local `redis-server` processes.
    Local,
}

impl Backend {
    /// The backend of this process: forced by `PRESENCE_TEST_BACKEND`, else
    /// Docker when the engine answers and has the image, else local processes.
    pub fn current() -> Backend {
        static CURRENT: OnceLock<Backend> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let b = match std::env::var("PRESENCE_TEST_BACKEND").as_deref() {
                Ok("docker") => Backend::Docker,
                Ok("local") => Backend::Local,
                _ => {
                    let image = format!("{}:{}", IMAGE.0, IMAGE.1);
                    let docker = Command::new("docker")
                        .args(["image", "inspect", &image])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false);
                    if docker {
                        Backend::Docker
                    } else {
                        Backend::Local
                    }
                }
            };
            eprintln!("presence-testkit: Redis servers run as {b:?} (testcontainers when Docker)");
            b
        })
    }
}
/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A free loopback port (its `+10000` cluster bus port is free too when `bus` is set).
pub fn free_port(bus: bool) -> io::Result<u16> {
    for _ in 0..200 {
        let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        let port = l.local_addr()?.port();
        if !bus {
            return Ok(port);
        }
        if port < 55_000
            && TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port + 10_000)).is_ok()
        {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free port pair found"))
}

/// Makes `ca.crt` (a CA of its own) and `server.crt`/`server.key` (for
/// `127.0.0.1` and `localhost`, signed by that CA) in `dir`, with `openssl`.
fn make_certificates(dir: &std::path::Path) -> io::Result<()> {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    // P-256 keys: quick to make, and every TLS stack takes them.
    const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let steps = [
        format!(
            "req -x509 {EC} -keyout ca.key -out ca.crt -days 2 -subj /CN=presence-testkit-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
        format!("req {EC} -keyout server.key -out server.csr -subj /CN=localhost"),
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
         -days 2 -extfile server.ext"
            .to_owned(),
    ];
    for step in &steps {
        let args: Vec<&str> = step.split_whitespace().collect();
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("openssl: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "openssl {}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    // The server (maybe in a container, as another user) must read its key.
    for f in ["server.key", "server.crt", "ca.crt"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Fails with a clear message when the Redis binaries are not installed (the
/// shell wrapper would otherwise only time out).
fn require_local_tools() -> io::Result<()> {
    for tool in ["redis-server", "redis-cli"] {
        if let Err(e) = Command::new(tool).arg("--version").output() {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{tool} is not installed ({e}); install Debian's redis-server and \
                     redis-tools, or run scripts/test.sh, which does"
                ),
            ));
        }
    }
    Ok(())
}

fn wait_until_accepting(port: u16, child: &mut Child) -> io::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "redis-server on port {port} exited: {status}"
            )));
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            // Accepting; now wait until it answers PING (it may still be loading).
            if redis_cli(port, &["PING"])
                .map(|o| o.trim() == "PONG")
                .unwrap_or(false)
            {
                return Ok(());
            }
        }
        sleep(Duration::from_millis(20));
    }
    Err(io::Error::other(format!(
        "redis-server on port {port} did not start in {START_TIMEOUT:?}"
    )))
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` and returns its stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> io::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One `redis-server` on a free loopback port (a process or a container).
pub struct RedisServer {
    port: u16,
    tls_port: Option<u16>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    backend: Backend,
    child: Option<Child>,
    container: Option<Container<GenericImage>>,
}

impl RedisServer {
    /// Starts a standalone server (no persistence).
    pub fn start() -> io::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `--option value` arguments.
    pub fn start_with(extra: &[&str]) -> io::Result<Self> {
        Self::start_inner(extra, false)
    }

    /// Starts a server that serves TLS on [`RedisServer::tls_url`] besides
    /// plain TCP on [`RedisServer::url`], with a certificate for `127.0.0.1`
    /// and `localhost` signed by a CA made for this server alone
    /// ([`RedisServer::ca_file`]). Clients need no certificate of their own.
    pub fn start_tls() -> io::Result<Self> {
        Self::start_inner(&[], true)
    }

    fn start_inner(extra: &[&str], tls: bool) -> io::Result<Self> {
        let bus = extra.contains(&"--cluster-enabled");
        let mut last = None;
        // A port can be taken between the check and the start: retry.
        for _ in 0..5 {
            // The TLS port is the free `+10000` one next to the plain port.
            let port = free_port(bus || tls)?;
            let dir = tempfile::tempdir()?;
            let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            let tls_port = if tls {
                make_certificates(dir.path())?;
                let file = |name: &str| dir.path().join(name).display().to_string();
                extra.extend([
                    "--tls-port".to_owned(),
                    (port + 10_000).to_string(),
                    "--tls-cert-file".to_owned(),
                    file("server.crt"),
                    "--tls-key-file".to_owned(),
                    file("server.key"),
                    "--tls-ca-cert-file".to_owned(),
                    file("ca.crt"),
                    "--tls-auth-clients".to_owned(),
                    "no".to_owned(),
                ]);
                Some(port + 10_000)
            } else {
                None
            };
            let mut s = Self {
                port,
                tls_port,
                dir,
                extra,
                backend: Backend::current(),
                child: None,
                container: None,
            };
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("cannot start redis-server")))
    }

    fn spawn(&mut self) -> io::Result<()> {
        match self.backend {
            Backend::Local => self.spawn_local(),
            Backend::Docker => self.spawn_container(),
        }
    }

    fn spawn_container(&mut self) -> io::Result<()> {
        let mut cmd = vec![
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--port".to_owned(),
            self.port.to_string(),
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
            "--protected-mode".to_owned(),
            "no".to_owned(),
        ];
        cmd.extend(self.extra.iter().cloned());
        // The working directory (certificates) at the same path inside.
        let dir = self.dir.path().display().to_string();
        let request = GenericImage::new(IMAGE.0, IMAGE.1)
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_network("host")
            .with_label("presence-testkit", "1")
            .with_mount(Mount::bind_mount(dir.clone(), dir))
            .with_cmd(cmd);
        // The blocking runner owns a runtime: start it off any async runtime thread.
        let container = std::thread::spawn(move || request.start())
            .join()
            .map_err(|_| io::Error::other("the container start panicked"))?
            .map_err(|e| io::Error::other(format!("cannot start the Redis container: {e}")))?;
        self.container = Some(container);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if redis_cli(self.port, &["PING"])
                .map(|o| o.trim() == "PONG")
                .unwrap_or(false)
            {
                return Ok(());
            }
            sleep(Duration::from_millis(20));
        }
        Err(io::Error::other(format!(
            "the Redis container on port {} does not answer",
            self.port
        )))
    }

    fn spawn_local(&mut self) -> io::Result<()> {
        require_local_tools()?;
        // redis-server runs under a small shell that holds our end of a pipe:
        // when this process exits (even by a panic or a kill), the pipe closes
        // and the shell kills the server, so no test leaves a server behind.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("redis-server \"$@\" & c=$!; read _; kill -9 $c; wait $c 2>/dev/null")
            .arg("sh")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        if let Err(e) = wait_until_accepting(self.port, &mut child) {
            drop(child.stdin.take());
            let _ = child.wait();
            return Err(e);
        }
        self.child = Some(child);
        Ok(())
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://127.0.0.1:TLS_PORT` of a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://127.0.0.1:{p}"))
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls_port.map(|_| self.dir.path().join("ca.crt"))
    }

    /// Its working directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Kills the server at once: its data is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
        if let Some(c) = self.container.take() {
            // Removing a container needs the runner's runtime: off this thread.
            let _ = std::thread::spawn(move || c.rm()).join();
        }
    }

    /// Where it runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// True while it answers PING.
    pub fn is_running(&mut self) -> bool {
        redis_cli(self.port, &["PING"])
            .map(|o| o.trim() == "PONG")
            .unwrap_or(false)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `masters` masters, each with `replicas` replicas,
/// every slot assigned.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the servers and creates a cluster of masters only.
    pub fn start(masters: usize) -> io::Result<Self> {
        Self::start_with_replicas(masters, 0)
    }

    /// Starts the servers and creates the cluster; returns once every node
    /// says `cluster_state:ok` and every replica is in sync with its master
    /// (so that a master killed at once can fail over).
    pub fn start_with_replicas(masters: usize, replicas: usize) -> io::Result<Self> {
        let count = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "2000",
                // As docs/operations.md advises: the other masters keep
                // serving while a failed one's replica is promoted.
                "--cluster-require-full-coverage",
                "no",
            ])?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let replicas = replicas.to_string();
        args.extend(["--cluster-replicas", replicas.as_str(), "--cluster-yes"]);
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        let cluster = Self { nodes };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ok = cluster.nodes.iter().all(|n| {
                let state = redis_cli(n.port, &["CLUSTER", "INFO"])
                    .map(|i| i.contains("cluster_state:ok"))
                    .unwrap_or(false);
                let synced = redis_cli(n.port, &["INFO", "replication"])
                    .map(|i| i.contains("role:master") || i.contains("master_link_status:up"))
                    .unwrap_or(false);
                state && synced
            });
            if ok {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "the cluster did not reach cluster_state:ok",
                ));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// The servers.
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The index in [`RedisCluster::nodes`] of the master that serves
    /// `key`'s slot now, as a running node sees the cluster.
    pub fn master_of(&mut self, key: &str) -> io::Result<usize> {
        let port = self
            .nodes
            .iter_mut()
            .find_map(|n| n.is_running().then_some(n.port))
            .ok_or_else(|| io::Error::other("no node of the cluster runs"))?;
        let slot: u16 = redis_cli(port, &["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .map_err(io::Error::other)?;
        // <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots...>
        let nodes = redis_cli(port, &["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
            });
            if serves {
                let addr = f[1].split('@').next().unwrap_or_default();
                let p: u16 = addr
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(io::Error::other)?;
                return self.nodes.iter().position(|n| n.port == p).ok_or_else(|| {
                    io::Error::other(format!("{addr} is not a node of this cluster"))
                });
            }
        }
        Err(io::Error::other(format!("no master serves slot {slot}")))
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,...`: every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{}", seeds.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_starts_restarts_and_stops() {
        let mut s = RedisServer::start().unwrap();
        assert_eq!(
            redis_cli(s.port(), &["SET", "k", "v"]).unwrap().trim(),
            "OK"
        );
        s.restart().unwrap();
        assert_eq!(
            redis_cli(s.port(), &["GET", "k"]).unwrap().trim(),
            "",
            "data is gone after a restart"
        );
        let port = s.port();
        drop(s);
        assert!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "killed on drop"
        );
    }

    #[test]
    fn cluster_of_three_masters_serves_every_slot() {
        let mut c = RedisCluster::start(3).unwrap();
        assert!(c.url().starts_with("redis-cluster://127.0.0.1:"));
        let port = c.nodes()[0].port();
        let info = redis_cli(port, &["CLUSTER", "INFO"]).unwrap();
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
}
