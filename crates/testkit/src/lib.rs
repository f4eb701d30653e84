//! Test and benchmark helpers: the local stack (real Postgres and the real broker, as
//! started by `deploy/local/stack up`), a fresh database and topic prefix per test, the
//! service binaries as real processes, tenants, and CRM event generators.

pub mod broker;
pub mod demo;
pub mod events;
pub mod hubspot;
pub mod kafka;
pub mod oidc;
pub mod otlp;
pub mod process;
pub mod salesforce;
pub mod smtp;
pub mod webhook;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection};

pub use broker::{BrokerKind, PrivateBroker, Storage};
pub use process::Service;

/// Where the local stack runs (env vars set by `deploy/local/stack env`, defaults otherwise).
#[derive(Debug, Clone)]
pub struct Stack {
    /// A URL to the maintenance database (to create test databases).
    pub admin_db_url: String,
    pub brokers: String,
    /// The stack broker's pid, for pausing it (SIGSTOP/SIGCONT).
    pub broker_pid: Option<u32>,
}

impl Stack {
    pub fn from_env() -> Self {
        let broker_pid = std::env::var("SPM_BROKER_PID")
            .ok()
            .and_then(|p| p.parse().ok())
            .or_else(|| {
                std::fs::read_to_string(repo_root().join(".local/broker.pid"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            });
        Self {
            admin_db_url: std::env::var("SPM_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://spm@127.0.0.1:55432/postgres".into()),
            brokers: std::env::var("SPM_TEST_KAFKA_BROKERS")
                .unwrap_or_else(|_| "127.0.0.1:59092".into()),
            broker_pid,
        }
    }
}

/// The repository root (tests run from a crate directory).
pub fn repo_root() -> PathBuf {
    let mut p = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    p.pop();
    p.pop();
    p
}

/// A Postgres of one's own (for tests that restart it): Debian's PostgreSQL 15 initialised
/// into a temporary directory, on a free port, superuser `spm`, trust auth on loopback.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(cmd: &str) -> std::process::Command {
    // initdb refuses root: run the server as the postgres system user, as the stack does.
    if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", cmd]);
        c
    } else {
        std::process::Command::new(cmd)
    }
}

fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    })
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let port = process::free_port();
        let dir = std::env::temp_dir().join(format!("spm-pg-{port}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("pg dir");
        if is_root() {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:", &dir.to_string_lossy()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the private Postgres directory to postgres");
        }
        let data = dir.join("data");
        let out = as_postgres(&format!("{PG_BIN}/initdb"))
            .args([
                "-D",
                &data.to_string_lossy(),
                "-U",
                "spm",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .expect("run initdb (is postgresql-15 installed?)");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self { port, dir };
        pg.ctl(&["start"]);
        pg
    }

    fn ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let log = self.dir.join("postgres.log");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c max_connections=200 -c fsync=on",
            self.port,
            self.dir.display()
        );
        let out = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .args([
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
            ])
            .args(args)
            .args(["-o", &opts])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The maintenance database URL.
    pub fn admin_url(&self) -> String {
        format!("postgres://spm@127.0.0.1:{}/postgres", self.port)
    }

    /// Restarts the server the hard way: immediate shutdown (no checkpoint, every connection
    /// cut, crash recovery at start), then start.
    pub fn restart(&self) {
        self.ctl(&["-m", "immediate", "stop"]);
        self.ctl(&["start"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .args(["-D", &data.to_string_lossy(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One test's isolated world: its own database and its own topic/group prefix on the shared
/// broker, so tests run in parallel without seeing each other.
pub struct TestEnv {
    pub stack: Stack,
    pub name: String,
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
    pub admin_token: String,
    pub log_dir: PathBuf,
    pub partitions: i32,
    /// Set when the test runs on a broker of its own.
    pub broker: Option<PrivateBroker>,
    /// Set when the test runs on a Postgres of its own.
    pub postgres: Option<PrivatePostgres>,
}

impl TestEnv {
    /// Like [`TestEnv::new`] with a private broker the test may pause.
    pub async fn with_private_broker(name: &str) -> Self {
        let mut env = Self::new(name).await;
        let b = PrivateBroker::start();
        env.stack.brokers = b.brokers.clone();
        env.broker = Some(b);
        env
    }

    /// A private durable broker (SQLite engine) and a private Postgres: the test may pause,
    /// kill and restart either without disturbing tests running alongside.
    pub async fn with_private_stack(name: &str) -> Self {
        let pg = PrivatePostgres::start();
        let mut stack = Stack::from_env();
        stack.admin_db_url = pg.admin_url();
        let mut env = Self::new_on(stack, name).await;
        env.postgres = Some(pg);
        let b = PrivateBroker::durable();
        env.stack.brokers = b.brokers.clone();
        env.broker = Some(b);
        env
    }

    /// Creates the database `spm_t_<name>_<random>`.
    pub async fn new(name: &str) -> Self {
        Self::new_on(Stack::from_env(), name).await
    }

    async fn new_on(stack: Stack, name: &str) -> Self {
        let suffix: u32 = rand::random();
        let db_name = format!("spm_t_{}_{suffix:08x}", name.replace('-', "_"));
        let mut conn = PgConnection::connect(&stack.admin_db_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach Postgres at {} ({e}); run deploy/local/stack up",
                    stack.admin_db_url
                )
            });
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let keep = std::env::var("SPM_KEEP_TEST_DB").is_ok();
        if let Some(tag) = owner_tag(keep) {
            sqlx::query(&format!("COMMENT ON DATABASE {db_name} IS '{tag}'"))
                .execute(&mut conn)
                .await
                .expect("tag test database");
            sweep_abandoned(&mut conn).await;
        }
        let db_url = match stack.admin_db_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db_name}"),
            None => panic!("SPM_TEST_DATABASE_URL has no database part"),
        };
        let log_dir = repo_root()
            .join("target/test-logs")
            .join(format!("{name}-{suffix:08x}"));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        Self {
            prefix: format!("t{suffix:08x}."),
            stack,
            name: name.to_owned(),
            db_name,
            db_url,
            admin_token: format!("op-{suffix:08x}"),
            log_dir,
            partitions: 3,
            broker: None,
            postgres: None,
        }
    }

    /// Kafka settings of this environment.
    pub fn kafka(&self) -> spm_bus::KafkaConfig {
        let mut k = spm_bus::KafkaConfig::local(&self.stack.brokers, &self.prefix);
        k.partitions = self.partitions;
        k
    }

    /// A connection pool on this test's database with `search_path` set to `schema`.
    pub async fn pool(&self, schema: &str) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(
                self.db_url
                    .parse::<sqlx::postgres::PgConnectOptions>()
                    .expect("db url")
                    .options([("search_path", schema)]),
            )
            .await
            .expect("connect test pool")
    }

    /// Starts service `name` (ingest, scoring, incentive, notification) and waits until it
    /// serves.
    pub async fn start(&self, name: &str) -> Service {
        Service::start(self, name, &[]).await
    }

    /// Starts a service with extra env vars.
    pub async fn start_with(&self, name: &str, extra: &[(&str, &str)]) -> Service {
        Service::start(self, name, extra).await
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::env::var("SPM_KEEP_TEST_DB").is_ok() {
            return;
        }
        let url = self.stack.admin_db_url.clone();
        let db = self.db_name.clone();
        let kafka = self.kafka();
        // Drop is synchronous: use a private runtime on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                // The broker keeps every topic in memory and slows down as they pile up
                // over a suite or a benchmark: this environment's go with it.
                let _ = tokio::time::timeout(
                    Duration::from_secs(15),
                    spm_bus::admin::delete_topics(&kafka),
                )
                .await;
                let mut c = PgConnection::connect(&url).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .execute(&mut c)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// The comment a test database gets: who created it, so that a later run can tell a
/// database whose process died (killed, interrupted) from one in use. A database kept on
/// purpose (`SPM_KEEP_TEST_DB`) says so and is never swept.
fn owner_tag(keep: bool) -> Option<String> {
    let host = hostname()?;
    let pid = std::process::id();
    let start = process_start(pid)?;
    let keep = if keep { " keep" } else { "" };
    Some(format!(
        "spm-test host={host} pid={pid} start={start}{keep}"
    ))
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    // The tag goes into SQL text: only plain host names.
    (!h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    .then(|| h.to_owned())
}

/// When process `pid` started (clock ticks since boot), or `None` if there is no such
/// process. Together with the pid it names one process even after the pid is reused.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a test database tagged `tag` was left on this host by a process that is gone.
/// Untagged databases, kept ones and other hosts' are never abandoned.
fn abandoned(tag: &str, host: &str) -> bool {
    let mut words = tag.split_whitespace();
    if words.next() != Some("spm-test") {
        return false;
    }
    let (mut tag_host, mut pid, mut start) = (None, None, None);
    for w in words {
        match w.split_once('=') {
            Some(("host", v)) => tag_host = Some(v),
            Some(("pid", v)) => pid = v.parse::<u32>().ok(),
            Some(("start", v)) => start = v.parse::<u64>().ok(),
            _ if w == "keep" => return false,
            _ => {}
        }
    }
    match (tag_host, pid, start) {
        (Some(h), Some(pid), Some(start)) if h == host => process_start(pid) != Some(start),
        _ => false,
    }
}

/// Drops the test databases that runs killed before their end left behind (their topics
/// went with the broker's memory); each database's comment names its creator.
async fn sweep_abandoned(conn: &mut PgConnection) {
    let Some(host) = hostname() else { return };
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        r"SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname LIKE 'spm\_t\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    for (db, tag) in rows {
        if tag.is_some_and(|t| abandoned(&t, &host)) {
            let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .execute(&mut *conn)
                .await;
            if dropped.is_ok() {
                eprintln!("dropped test database {db}: the run that created it is gone");
            }
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A request with `authorization: Bearer <key>`.
pub fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii key"),
    );
    r
}

/// Sends a signal to a process with the `kill` command (no unsafe code needed).
pub fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// A tenant created through ingest's admin API.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub admin_key: String,
    pub webhook_secret: String,
}

/// Creates a tenant (base currency EUR, UTC, calendar fiscal year) through `ingest`.
pub async fn create_tenant(env: &TestEnv, ingest: &Service, id: &str) -> Tenant {
    create_tenant_with(env, ingest, id, "EUR", "UTC", 1).await
}

pub async fn create_tenant_with(
    env: &TestEnv,
    ingest: &Service,
    id: &str,
    currency: &str,
    tz: &str,
    fy: u32,
) -> Tenant {
    use spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient;
    let mut admin = IngestAdminServiceClient::new(ingest.channel().await);
    let resp = admin
        .create_tenant(authed(
            spm_proto::ingest::v1::CreateTenantRequest {
                tenant_id: id.to_owned(),
                name: format!("Tenant {id}"),
                context: Some(spm_proto::common::v1::TenantContext {
                    time_zone: tz.to_owned(),
                    fiscal_year_start_month: fy,
                    base_currency: currency.to_owned(),
                }),
            },
            &env.admin_token,
        ))
        .await
        .expect("create tenant")
        .into_inner();
    Tenant {
        id: id.to_owned(),
        admin_key: resp.admin_api_key,
        webhook_secret: resp.webhook_secret,
    }
}

/// Waits until `svc` accepts `key` (tenants and keys reach services over Kafka).
pub async fn wait_key_known(svc: &Service, key: &str) {
    let ch = svc.channel().await;
    eventually(
        Duration::from_secs(30),
        &format!("{} to know the key", svc.name),
        || {
            let ch = ch.clone();
            async move { process::probe_auth(ch, key).await.then_some(()) }
        },
    )
    .await;
}

/// An HTTP client for tests (installs the process's TLS crypto provider first).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_abandoned_only_when_its_creator_is_gone() {
        let host = hostname().expect("host name");
        let me = owner_tag(false).expect("own tag");
        assert!(!abandoned(&me, &host), "the running process owns {me}");

        let pid = std::process::id();
        let start = process_start(pid).expect("own start time");
        // The same pid with another start time: the pid was reused, the creator is gone.
        let reused = format!("spm-test host={host} pid={pid} start={}", start + 1);
        assert!(abandoned(&reused, &host));
        // A child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let child_pid = child.id();
        child.wait().expect("wait");
        let dead = format!("spm-test host={host} pid={child_pid} start=1");
        assert!(abandoned(&dead, &host));

        // Kept on purpose, another host's, untagged or garbled: never swept.
        assert!(!abandoned(&format!("{reused} keep"), &host));
        assert!(!abandoned(&owner_tag(true).unwrap(), &host));
        assert!(!abandoned(&reused, "elsewhere"));
        assert!(!abandoned("", &host));
        assert!(!abandoned("made by hand", &host));
        assert!(!abandoned(
            &format!("spm-test host={host} pid=x start=1"),
            &host
        ));
    }
}
