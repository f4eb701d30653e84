//! `spm`: run SPM on this machine and talk to it.

mod audit;
mod bench;
mod commands;
mod connect;
mod demo;
mod local;
mod login;
mod out;
mod plan;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "spm",
    version,
    about = "SPM: sales performance management, event-driven"
)]
pub struct Cli {
    /// Ingest gRPC endpoint.
    #[arg(
        long,
        env = "SPM_INGEST_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub ingest: String,
    /// Scoring gRPC endpoint.
    #[arg(
        long,
        env = "SPM_SCORING_URL",
        default_value = "http://127.0.0.1:50052",
        global = true
    )]
    pub scoring: String,
    /// Incentive gRPC endpoint.
    #[arg(
        long,
        env = "SPM_INCENTIVE_URL",
        default_value = "http://127.0.0.1:50053",
        global = true
    )]
    pub incentive: String,
    /// Notification gRPC endpoint.
    #[arg(
        long,
        env = "SPM_NOTIFICATION_URL",
        default_value = "http://127.0.0.1:50054",
        global = true
    )]
    pub notification: String,
    /// Connect (CRM connectors) gRPC endpoint.
    #[arg(
        long,
        env = "SPM_CONNECT_URL",
        default_value = "http://127.0.0.1:50055",
        global = true
    )]
    pub connect: String,
    /// API key of the tenant (default: the person signed in with `spm login`, else the demo
    /// tenant's admin key in .local/demo-tenant.json).
    #[arg(long, env = "SPM_API_KEY", global = true, hide_env_values = true)]
    pub key: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bring up the local stack and the four services, stream a synthetic tenant through
    /// ingest, then show the leaderboard, a score breakdown, a statement, notifications and
    /// a deal's trace id.
    Demo(demo::Args),
    /// Start the local stack and the four services (if not running).
    Up,
    /// Stop the four services and the local stack.
    Down,
    /// Show what runs.
    Status,
    /// Tenants and API keys.
    #[command(subcommand)]
    Tenant(commands::TenantCmd),
    /// Submit CRM events from a JSON-lines file (one CrmEvent per line, proto3 JSON).
    Ingest(commands::IngestArgs),
    /// A rep's score, with `--explain` the contributing events per KPI.
    Score(commands::ScoreArgs),
    /// The leaderboard of the tenant or a team.
    Leaderboard(commands::LeaderboardArgs),
    /// A rep's statement: every line explained; `--line KEY` shows one line's postings
    /// and calculation trace.
    Statement(commands::StatementArgs),
    /// Events ingest accepted while a rep or deal they refer to was unknown.
    #[command(subcommand)]
    Parked(commands::ParkedCmd),
    /// CRM connectors (Salesforce, HubSpot): `status`, `errors`, `resolve` a stale checkpoint.
    #[command(subcommand)]
    Connect(connect::ConnectCmd),
    /// Rebuild projections from the topics (scoring and incentive by default): stops the
    /// local service, replays every topic it consumes from offset 0, starts it again.
    Replay {
        /// Which services (scoring, incentive).
        #[arg(default_values_t = ["scoring".to_owned(), "incentive".to_owned()])]
        services: Vec<String>,
    },
    /// Sign in as a person with the company's OpenID provider: later commands call SPM as
    /// that person (a rep sees their own numbers, a manager their team).
    Login(login::Args),
    /// Forget the person signed in with `spm login`.
    Logout,
    /// Tamper evidence and the audit trail: `verify` the ledger and every service's trail,
    /// `export` a period for auditors, `log` who changed what.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Plan versions through their lifecycle: draft, shadow, propose, approve (by someone
    /// else), retire; compare what a shadow version would pay against the live plans.
    #[command(subcommand)]
    Plan(plan::PlanCmd),
    /// Benchmarks: measure, print, and write docs/benchmarks.md (build with --release).
    Bench(bench::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Demo(a) => demo::run(&cli, a).await,
        Command::Up => local::up().await,
        Command::Down => local::down().await,
        Command::Status => local::status().await,
        Command::Tenant(t) => commands::tenant(&cli, t).await,
        Command::Ingest(a) => commands::ingest(&cli, a).await,
        Command::Score(a) => commands::score(&cli, a).await,
        Command::Leaderboard(a) => commands::leaderboard(&cli, a).await,
        Command::Statement(a) => commands::statement(&cli, a).await,
        Command::Parked(c) => commands::parked(&cli, c).await,
        Command::Connect(c) => connect::run(&cli, c).await,
        Command::Replay { services } => local::replay(services).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Audit(c) => audit::run(&cli, c).await,
        Command::Plan(c) => plan::run(&cli, c).await,
        Command::Login(a) => login::login(a).await,
        Command::Logout => login::logout(),
    }
}
