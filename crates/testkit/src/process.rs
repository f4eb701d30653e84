//! Service binaries as real processes.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::{TestEnv, eventually, signal};

/// A running service process.
pub struct Service {
    pub name: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    generation: u32,
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The path of a workspace binary (`cargo build --bins` puts them next to the test's deps dir).
pub fn binary(name: &str) -> PathBuf {
    // Next to the running binary (the spm CLI), or one level up (a test in deps/).
    let exe = std::env::current_exe().expect("current exe");
    let here = exe.parent().expect("exe dir");
    let p = [
        here.join(name),
        here.parent().map(|d| d.join(name)).unwrap_or_default(),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| here.join(name));
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

impl Service {
    pub async fn start(env: &TestEnv, name: &str, extra: &[(&str, &str)]) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut vars: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), env.db_url.clone()),
            ("KAFKA_BROKERS".into(), env.stack.brokers.clone()),
            ("KAFKA_TOPIC_PREFIX".into(), env.prefix.clone()),
            ("KAFKA_PARTITIONS".into(), env.partitions.to_string()),
            ("SPM_GRPC_ADDR".into(), grpc.to_string()),
            ("SPM_HTTP_ADDR".into(), http.to_string()),
            ("SPM_LOG_FORMAT".into(), "json".into()),
            ("SPM_ADMIN_TOKEN".into(), env.admin_token.clone()),
            ("SPM_DB_MAX_CONNECTIONS".into(), "5".into()),
            (
                "RUST_LOG".into(),
                std::env::var("SPM_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        // Settings an operator would tune, passed through from the caller's environment
        // (benchmark experiments), below anything the caller sets explicitly.
        for k in [
            "KAFKA_CONFIG",
            "MALLOC_ARENA_MAX",
            "SPM_INCENTIVE_CONSUMER_MEMBERS",
        ] {
            if let Ok(v) = std::env::var(k) {
                vars.push((k.into(), v));
            }
        }
        for (k, v) in extra {
            vars.retain(|(x, _)| x != k);
            vars.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut s = Self {
            name: name.to_owned(),
            grpc,
            http,
            log: env
                .log_dir
                .join(format!("{name}-{grpc}.log").replace(':', "_")),
            env: vars,
            child: None,
            generation: 0,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        self.generation += 1;
        // A free port is only free when it was looked at: another process may take it
        // before the service binds it. On a first start, take new ports and go again.
        let mut tries = 0;
        loop {
            let from = std::fs::metadata(&self.log).map_or(0, |m| m.len());
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("open service log");
            let err = log.try_clone().expect("clone log handle");
            let mut cmd = Command::new(binary(&format!("spm-{}", self.name)));
            cmd.env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(err))
                .kill_on_drop(true);
            self.child = Some(cmd.spawn().expect("spawn service"));
            let Err(status) = self.ready_or_exit().await else {
                return;
            };
            let text = std::fs::read(&self.log).unwrap_or_default();
            let since = String::from_utf8_lossy(
                text.get(usize::try_from(from).unwrap_or(0)..)
                    .unwrap_or_default(),
            );
            if self.generation == 1 && tries < 3 && since.contains("Address already in use") {
                tries += 1;
                self.grpc = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
                self.http = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
                for (k, v) in &mut self.env {
                    match k.as_str() {
                        "SPM_GRPC_ADDR" => *v = self.grpc.to_string(),
                        "SPM_HTTP_ADDR" => *v = self.http.to_string(),
                        _ => {}
                    }
                }
                continue;
            }
            self.exited(status);
        }
    }

    /// Waits until the gRPC health check says SERVING.
    pub async fn wait_ready(&mut self) {
        if let Err(status) = self.ready_or_exit().await {
            self.exited(status);
        }
    }

    fn exited(&self, status: std::process::ExitStatus) -> ! {
        panic!(
            "{} exited during start ({status}); log {}:\n{}",
            self.name,
            self.log.display(),
            tail(&self.log)
        );
    }

    /// Waits until the gRPC health check says SERVING, or the process exits (its status).
    async fn ready_or_exit(&mut self) -> Result<(), std::process::ExitStatus> {
        let addr = self.grpc;
        let name = self.name.clone();
        let log = self.log.clone();
        let started = std::time::Instant::now();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(status);
            }
            if health(addr).await {
                return Ok(());
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{name} not ready after 90 s; log {}:\n{}",
                log.display(),
                tail(&log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("running process")
    }

    /// SIGKILL, and reap.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM and wait for a clean exit (panics if it does not exit within `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running process");
        if let Some(pid) = c.id() {
            signal(pid, "TERM");
        }
        tokio::time::timeout(timeout, c.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within {timeout:?} of SIGTERM", self.name))
            .expect("wait")
    }

    /// Starts the process again with the same settings (after kill9 or terminate).
    pub async fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop {} before restarting it",
            self.name
        );
        self.spawn().await;
    }

    /// Restarts with changed env vars.
    pub async fn restart_with(&mut self, set: &[(&str, &str)], unset: &[&str]) {
        for (k, v) in set {
            self.env.retain(|(x, _)| x != k);
            self.env.push(((*k).to_owned(), (*v).to_owned()));
        }
        self.env.retain(|(k, _)| !unset.contains(&k.as_str()));
        self.restart().await;
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to service")
    }

    /// The service's Prometheus metrics text.
    pub async fn metrics(&self) -> String {
        crate::http()
            .get(format!("http://{}/metrics", self.http))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Sum of every sample of a metric whose labels contain all of `labels` (`k="v"`).
    pub async fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        parse_metric_sum(&self.metrics().await, name, labels)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` at least `n` times.
    pub async fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) {
        let log = self.log.clone();
        eventually(
            timeout,
            &format!("{n} x {:?} in {}", needle, self.log.display()),
            || {
                let log = log.clone();
                async move {
                    std::fs::read_to_string(&log)
                        .ok()
                        .filter(|t| t.matches(needle).count() >= n)
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let log = self.log.clone();
        eventually(
            timeout,
            &format!("{:?} in {}", needle, self.log.display()),
            || {
                let log = log.clone();
                async move {
                    std::fs::read_to_string(&log)
                        .ok()
                        .filter(|t| t.contains(needle))
                        .map(|_| ())
                }
            },
        )
        .await;
    }
}

/// Sums a metric's samples matching `labels` in a Prometheus text exposition.
pub fn parse_metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

fn tail(p: &std::path::Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn health(addr: SocketAddr) -> bool {
    let Ok(ep) = Channel::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(ch) = ep
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
    else {
        return false;
    };
    let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
    matches!(
        c.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await,
        Ok(r) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}

/// Whether `key` authenticates at the service behind `ch`: the edge authenticates before
/// routing, so an unknown method answers UNIMPLEMENTED for a known key and UNAUTHENTICATED
/// otherwise.
pub async fn probe_auth(ch: Channel, key: &str) -> bool {
    let mut grpc = tonic::client::Grpc::new(ch);
    if grpc.ready().await.is_err() {
        return false;
    }
    let path = http_path("/spm.probe.v1.Probe/Ping");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc.unary(crate::authed((), key), path, codec).await {
        Err(s) => s.code() == tonic::Code::Unimplemented,
        Ok(_) => true,
    }
}

fn http_path(p: &'static str) -> http_path::PathAndQuery {
    http_path::PathAndQuery::from_static(p)
}

mod http_path {
    pub use tonic::codegen::http::uri::PathAndQuery;
}
