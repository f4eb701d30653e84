//! A broker of one's own: the local Kafka-compatible broker (nisshi, or Tansu for
//! comparisons) on a free loopback port, for tests and benchmarks that pause, kill or
//! restart it without disturbing anything running alongside.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::process;

/// Which broker binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// nisshi 0.7.0-pre.2, what the local stack runs.
    Nisshi,
    /// Tansu 0.6.0, its predecessor (benchmark baselines).
    Tansu,
}

impl BrokerKind {
    pub fn binary(self) -> &'static str {
        match self {
            Self::Nisshi => "nisshi",
            Self::Tansu => "tansu",
        }
    }

    /// Where the binary is: `~/.cargo/bin` (where `cargo install` puts it), else `PATH`.
    pub fn path(self) -> Option<PathBuf> {
        let name = self.binary();
        let home = std::env::var("HOME")
            .ok()
            .map(|h| Path::new(&h).join(".cargo/bin").join(name));
        let on_path = std::env::var("PATH").ok().and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        });
        home.filter(|p| p.is_file()).or(on_path)
    }

    pub fn installed(self) -> bool {
        self.path().is_some()
    }
}

/// Where the broker keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// In memory: fast, forgotten when the process ends.
    Memory,
    /// A SQLite file in the broker's own directory: survives `kill -9` and a restart.
    Sqlite,
}

impl Storage {
    fn url(self, kind: BrokerKind) -> &'static str {
        match (self, kind) {
            (Self::Memory, BrokerKind::Nisshi) => "memory://nisshi/",
            (Self::Memory, BrokerKind::Tansu) => "memory://tansu/",
            // Relative to the broker's working directory (its own directory).
            (Self::Sqlite, _) => "sqlite://broker.db",
        }
    }
}

pub struct PrivateBroker {
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub brokers: String,
    pub kind: BrokerKind,
    pub storage: Storage,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateBroker {
    /// nisshi on its memory engine.
    pub fn start() -> Self {
        Self::launch(BrokerKind::Nisshi, Storage::Memory)
    }

    /// nisshi on its SQLite engine: topics, records and committed offsets survive
    /// [`PrivateBroker::kill9`] and [`PrivateBroker::restart`].
    pub fn durable() -> Self {
        Self::launch(BrokerKind::Nisshi, Storage::Sqlite)
    }

    pub fn launch(kind: BrokerKind, storage: Storage) -> Self {
        let port = process::free_port();
        let dir =
            std::env::temp_dir().join(format!("spm-broker-{port}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let mut b = Self {
            brokers: format!("127.0.0.1:{port}"),
            kind,
            storage,
            port,
            dir,
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let bin = self.kind.path().unwrap_or_else(|| {
            panic!(
                "{} is not installed: run deploy/local/stack install",
                self.kind.binary()
            )
        });
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("broker log");
        // A clean environment: the broker reads generic names (LISTENER_URL,
        // STORAGE_ENGINE, OTEL_EXPORTER_OTLP_ENDPOINT...) that a test may have set.
        let child = Command::new(bin)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // SPM_BROKER_LOG: the broker's RUST_LOG (e.g. nisshi_broker::coordinator=debug).
            .env(
                "RUST_LOG",
                std::env::var("SPM_BROKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                self.storage.url(self.kind),
            ])
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .expect("start a private broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private broker did not listen; see {}",
                self.dir.join("broker.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGSTOP: the broker stops answering; connections stay open.
    pub fn pause(&self) {
        crate::signal(self.pid(), "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        crate::signal(self.pid(), "CONT");
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and data directory (after [`Self::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Its log (stderr), for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill9();
        if std::env::var("SPM_KEEP_TEST_DB").is_ok() {
            eprintln!("kept the private broker's directory {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
