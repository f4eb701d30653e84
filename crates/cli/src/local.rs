//! Running SPM on this machine: the local stack (`deploy/local/stack`) and the four service
//! binaries as background processes with logs and pids under `.local/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// (service, gRPC port, HTTP port)
pub const SERVICES: &[(&str, u16, u16)] = &[
    ("ingest", 50051, 8081),
    ("scoring", 50052, 8082),
    ("incentive", 50053, 8083),
    ("notification", 50054, 8084),
];

/// The repository root: `SPM_HOME`, or the nearest ancestor of the current directory that
/// holds `deploy/local/stack`.
pub fn root() -> anyhow::Result<PathBuf> {
    if let Ok(h) = std::env::var("SPM_HOME") {
        return Ok(PathBuf::from(h));
    }
    let mut d = std::env::current_dir()?;
    loop {
        if d.join("deploy/local/stack").exists() {
            return Ok(d);
        }
        if !d.pop() {
            bail!("run spm inside the SPM repository (or set SPM_HOME)");
        }
    }
}

pub fn state_dir() -> anyhow::Result<PathBuf> {
    let d = root()?.join(".local");
    std::fs::create_dir_all(d.join("services"))?;
    Ok(d)
}

/// The operator token for tenant creation (created once).
pub fn admin_token() -> anyhow::Result<String> {
    let p = state_dir()?.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&p) {
        return Ok(t.trim().to_owned());
    }
    let t: [u8; 16] = rand::random();
    let t: String = t.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&p, &t)?;
    Ok(t)
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("exe dir")?.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build with `cargo build --workspace --bins`",
            p.display()
        );
    }
    Ok(p)
}

pub async fn healthy(port: u16) -> bool {
    let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(ch) = ep
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
    else {
        return false;
    };
    let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
    matches!(c.check(tonic_health::pb::HealthCheckRequest::default()).await,
        Ok(r) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
}

fn stack(cmd: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new(root()?.join("deploy/local/stack"))
        .arg(cmd)
        .status()
        .context("running deploy/local/stack")?;
    if !status.success() {
        bail!("deploy/local/stack {cmd} failed");
    }
    Ok(())
}

/// Starts the local stack (Postgres and the broker) when it is not running.
pub fn stack_up() -> anyhow::Result<()> {
    stack("up")
}

/// The command line of a local service, with the local stack's settings.
fn service_command(
    name: &str,
    grpc: u16,
    http: u16,
    token: &str,
) -> anyhow::Result<std::process::Command> {
    let mut c = std::process::Command::new(binary(&format!("spm-{name}"))?);
    c.env("DATABASE_URL", "postgres://spm@127.0.0.1:55432/spm")
        .env("KAFKA_BROKERS", "127.0.0.1:59092")
        .env("SPM_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("SPM_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("SPM_ADMIN_TOKEN", token)
        .env("SPM_LOG_FORMAT", "json");
    Ok(c)
}

/// Stops one local service (SIGTERM, then waits until it no longer serves). True when it
/// was running.
async fn stop(name: &str, grpc: u16) -> anyhow::Result<bool> {
    let pid_file = state_dir()?.join(format!("services/{name}.pid"));
    let Ok(pid) = std::fs::read_to_string(&pid_file) else {
        return Ok(false);
    };
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.trim())
        .status();
    let t = Instant::now();
    while healthy(grpc).await && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_file(pid_file);
    eprintln!("stopped spm-{name}");
    Ok(true)
}

/// Rebuilds the projections of `services` (scoring, incentive) from the topics: each
/// running service is stopped, `spm-<service> rebuild` replays every topic it consumes
/// from offset 0, and the service is started again. The earnings ledger is the system of
/// record and stays; what the rebuilt inputs say differently is posted as corrections.
pub async fn replay(services: &[String]) -> anyhow::Result<()> {
    stack("up")?;
    let token = admin_token()?;
    let mut restart = false;
    for name in services {
        let Some((_, grpc, http)) = SERVICES.iter().find(|(n, ..)| n == name) else {
            bail!("spm replay rebuilds scoring and incentive, not {name}");
        };
        if !matches!(name.as_str(), "scoring" | "incentive") {
            bail!(
                "{name} keeps no projection to rebuild ({})",
                if name == "ingest" {
                    "ingest is where events enter: its state is the source"
                } else {
                    "notifications are side effects; replaying them would send them again"
                }
            );
        }
        restart |= stop(name, *grpc).await?;
        eprintln!("rebuilding spm-{name} from the topics...");
        let t = Instant::now();
        let out = service_command(name, *grpc, *http, &token)?
            .arg("rebuild")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running spm-{name} rebuild"))?;
        if !out.status.success() {
            bail!(
                "spm-{name} rebuild failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!("{}", String::from_utf8_lossy(&out.stdout).trim());
        eprintln!("spm-{name} rebuilt in {:.1} s", t.elapsed().as_secs_f64());
    }
    if restart {
        up().await?;
    }
    Ok(())
}

/// Starts the stack and every service that is not answering; waits until all serve.
pub async fn up() -> anyhow::Result<()> {
    stack("up")?;
    let state = state_dir()?;
    let token = admin_token()?;
    for (name, grpc, http) in SERVICES {
        if healthy(*grpc).await {
            continue;
        }
        let log = std::fs::File::create(state.join(format!("services/{name}.log")))?;
        let child = service_command(name, *grpc, *http, &token)?
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting spm-{name}"))?;
        std::fs::write(
            state.join(format!("services/{name}.pid")),
            child.id().to_string(),
        )?;
        eprintln!(
            "started spm-{name} (pid {}, gRPC 127.0.0.1:{grpc}, metrics http://127.0.0.1:{http}/metrics)",
            child.id()
        );
    }
    let started = Instant::now();
    for (name, grpc, _) in SERVICES {
        while !healthy(*grpc).await {
            if started.elapsed() > Duration::from_secs(120) {
                bail!("spm-{name} did not become healthy; see .local/services/{name}.log");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if !portal_up().await {
        let log = std::fs::File::create(state.join("services/portal.log"))?;
        let child = std::process::Command::new(binary("spm-portal")?)
            .env("SPM_PORTAL_ADDR", format!("127.0.0.1:{PORTAL_PORT}"))
            .env("SPM_PORTAL_PUBLIC_URL", portal_url())
            .env("SPM_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting spm-portal")?;
        std::fs::write(state.join("services/portal.pid"), child.id().to_string())?;
        eprintln!("started spm-portal (pid {}, {})", child.id(), portal_url());
        while !portal_up().await {
            if started.elapsed() > Duration::from_secs(120) {
                bail!("spm-portal did not come up; see .local/services/portal.log");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// The portal's local port and address.
pub const PORTAL_PORT: u16 = 8080;

pub fn portal_url() -> String {
    format!("http://127.0.0.1:{PORTAL_PORT}")
}

async fn portal_up() -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", PORTAL_PORT))
        .await
        .is_ok()
}

async fn stop_portal() -> anyhow::Result<()> {
    let pid_file = state_dir()?.join("services/portal.pid");
    let Ok(pid) = std::fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.trim())
        .status();
    let t = Instant::now();
    while portal_up().await && t.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_file(pid_file);
    eprintln!("stopped spm-portal");
    Ok(())
}

/// Stops the services (SIGTERM, then waits) and the stack.
pub async fn down() -> anyhow::Result<()> {
    stop_portal().await?;
    for (name, grpc, _) in SERVICES {
        stop(name, *grpc).await?;
    }
    stack("down")
}

pub async fn status() -> anyhow::Result<()> {
    for (name, grpc, http) in SERVICES {
        let s = if healthy(*grpc).await {
            "serving"
        } else {
            "down"
        };
        println!(
            "{name:<13} {s:<8} gRPC 127.0.0.1:{grpc}  metrics http://127.0.0.1:{http}/metrics"
        );
    }
    println!(
        "{:<13} {:<8} {}",
        "portal",
        if portal_up().await { "serving" } else { "down" },
        portal_url()
    );
    stack("status")
}
