//! The incentive service: versioned compensation plans over the deal and score streams, an
//! append-only earnings ledger with explained lines, statements, recognition, what-if,
//! plan simulation and disputes.

pub mod api;
pub mod cache;
pub mod chain;
pub mod consume;
pub mod domain;
pub mod engine;
pub mod plans;
pub mod route;
pub mod store;
pub mod warm;

use std::sync::Arc;

use spm_core::topics;
use spm_proto::incentive::v1::incentive_admin_service_server::IncentiveAdminServiceServer;
use spm_server::grpc::GrpcServer;
use spm_server::{App, ServiceConfig};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "spm-incentive", about = "SPM incentive service")]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceConfig,

    /// Members of the consumer group run by this process (see `ConsumerLoop::members`):
    /// with two, one batch can compute while another waits for Postgres. One by default:
    /// two measured no faster on this 2-core machine and cost Postgres 50% more CPU.
    #[arg(
        long = "consumer-members",
        env = "SPM_INCENTIVE_CONSUMER_MEMBERS",
        default_value_t = 1
    )]
    pub consumer_members: usize,

    /// Rep-periods with fewer deals + ledger holdings than this are read from Postgres on
    /// each recompute instead of kept in memory (see `warm`).
    #[arg(long = "warm-min", env = "SPM_INCENTIVE_WARM_MIN", default_value_t = warm::MIN_WEIGHT)]
    pub warm_min: usize,

    /// Deals + ledger holdings kept in memory at most (about 200 bytes each); the least
    /// recently used rep-periods go first.
    #[arg(long = "warm-budget", env = "SPM_INCENTIVE_WARM_BUDGET", default_value_t = warm::BUDGET)]
    pub warm_budget: usize,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve (the default).
    Serve,
    /// Rebuild the input projections (credits, score snapshots, org) from the topics and
    /// recompute every rep-period; the ledger is never rewritten, so only differences are
    /// posted (none when it was consistent). Stop the service first.
    Rebuild,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The topics incentive consumes.
pub const TOPICS: &[&str] = &[topics::TENANTS, topics::ORG, topics::DEALS, topics::SCORES];

pub async fn run(config: Config) -> anyhow::Result<()> {
    match config.command {
        Some(Command::Rebuild) => rebuild(config).await,
        _ => serve(config).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut app = App::start("incentive", config.service.clone(), &MIGRATOR).await?;
    let adopted = chain::adopt(&app.pool).await?;
    if adopted > 0 {
        tracing::info!(
            postings = adopted,
            "chained the postings made before chains existed"
        );
    }
    // Batches recompute rep-periods (~1-2k deals/s): 1,000 records queued and 1 MiB fetches
    // keep up, and on a backlog hold ~30 MiB less than the defaults (10,000 and 8 MiB).
    // Larger batches coalesce more deals per recompute, but 2,000-5,000 gave no rate
    // outside this machine's usual spread and up to 260 MB of RSS (5,000).
    app.consume_with(
        "incentive",
        TOPICS,
        Arc::new(consume::IncentiveHandler::live(warm::Warm::new(
            config.warm_min,
            config.warm_budget,
        ))),
        |l| l.prefetch(1000, 1 << 20).members(config.consumer_members),
    );
    let statements = Arc::new(cache::Statements::default());
    {
        let (tx, mut rx) = tokio::sync::broadcast::channel::<String>(4096);
        tokio::spawn(spm_server::listen::forward(
            app.pool.clone(),
            cache::CHANNEL,
            tx,
            app.cancel.clone(),
        ));
        let statements = statements.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(payload) => statements.invalidate(&payload),
                    // Missed changes: forget everything.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        statements.invalidate("");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
    let api = api::Api {
        pool: app.pool.clone(),
        kafka: app.config.kafka.clone(),
        relay: app.relay_waker(),
        contexts: Arc::default(),
        statements,
    };
    let max = app.config.max_message_bytes();
    let mut grpc = GrpcServer::new(app.keys.clone());
    grpc.add_service(route::StatementRoute::new(api.clone(), max))
        .add_service(
            IncentiveAdminServiceServer::new(api)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .people_may_call(PEOPLE_METHODS);
    app.serve(grpc, axum::Router::new()).await
}

/// What signed-in people may call; each method scopes them (spm_server::access).
pub const PEOPLE_METHODS: &[&str] = &[
    "/spm.incentive.v1.IncentiveService/GetStatement",
    "/spm.incentive.v1.IncentiveService/ExplainLine",
    "/spm.incentive.v1.IncentiveService/ListAwards",
    "/spm.incentive.v1.IncentiveService/WhatIf",
    "/spm.incentive.v1.IncentiveService/SimulatePlan",
    "/spm.incentive.v1.IncentiveService/OpenDispute",
    "/spm.incentive.v1.IncentiveService/ListDisputes",
    "/spm.incentive.v1.IncentiveService/WhoAmI",
    "/spm.incentive.v1.IncentiveAdminService/PutPlan",
    "/spm.incentive.v1.IncentiveAdminService/ListPlans",
    "/spm.incentive.v1.IncentiveAdminService/GetPlan",
    "/spm.incentive.v1.IncentiveAdminService/TransitionPlan",
    "/spm.incentive.v1.IncentiveAdminService/ApprovePlan",
    "/spm.incentive.v1.IncentiveAdminService/GetPlanPolicy",
    "/spm.incentive.v1.IncentiveAdminService/SetPlanPolicy",
    "/spm.incentive.v1.IncentiveAdminService/ComparePlan",
    "/spm.incentive.v1.IncentiveAdminService/ClosePeriod",
    "/spm.incentive.v1.IncentiveAdminService/MarkPeriodPaid",
    "/spm.incentive.v1.IncentiveAdminService/ResolveDispute",
    "/spm.incentive.v1.IncentiveService/DiffStatement",
    "/spm.incentive.v1.IncentiveAdminService/VerifyLedger",
    "/spm.incentive.v1.IncentiveAdminService/ExportLedger",
];

/// Input projections rebuilt from the topics (the ledger, plans, periods, awards and
/// disputes are the system of record and stay).
pub const PROJECTIONS: &[&str] = &[
    "credits",
    "kpis",
    "org_reps",
    "org_rep_history",
    "org_teams",
    "auth_tenants",
    "auth_keys",
    "auth_idps",
    "auth_people",
    "inbox",
];

/// Concurrent readers while rebuilding (partitions shared among them).
const REBUILD_WORKERS: usize = 3;

/// Records per transaction while rebuilding (larger than live: no latency to keep).
const REBUILD_BATCH: usize = 5000;

/// Rep-periods recomputed per transaction at the end of a rebuild.
const RECOMPUTE_CHUNK: usize = 1000;

async fn rebuild(config: Config) -> anyhow::Result<()> {
    let telemetry = spm_telemetry::init("spm-incentive-rebuild", config.service.log_format)?;
    let pool = spm_server::db::connect(
        &config.service.database_url,
        "incentive",
        config.service.db_max_connections,
    )
    .await?;
    spm_server::db::migrate(&pool, &MIGRATOR).await?;
    let started = std::time::Instant::now();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await?;
    let producer = spm_bus::Producer::new(&config.service.kafka)?;
    let deferred = consume::Deferred::default();
    let l = spm_bus::consumer::ConsumerLoop::new(
        &config.service.kafka,
        "incentive",
        TOPICS,
        pool.clone(),
        producer,
        Arc::new(consume::IncentiveHandler {
            emit: false,
            warm: None,
            deferred: Some(deferred.clone()),
        }),
    )
    .max_batch(REBUILD_BATCH);
    let read = l
        .rebuild(
            PROJECTIONS,
            REBUILD_WORKERS,
            spm_server::shutdown::on_signal(),
        )
        .await?;
    let replayed = started.elapsed();
    // Every rep-period touched, recomputed once from the rebuilt inputs: what differs from
    // the ledger is posted as a correction.
    let tenants = std::mem::take(&mut *deferred.lock().expect("deferred"));
    let mut recomputed = 0usize;
    for (tenant, (context, pairs)) in tenants {
        let pairs: Vec<_> = pairs.into_iter().collect();
        recomputed += pairs.len();
        for chunk in pairs.chunks(RECOMPUTE_CHUNK) {
            let mut tx = pool.begin().await?;
            engine::Ctx::lock_plans(&mut tx, &tenant).await?;
            let ctx = engine::Ctx::load(&mut tx, &tenant, context.clone(), false).await?;
            let mut out = spm_bus::Outbox::new(&config.service.kafka);
            engine::recompute_many(
                &mut tx,
                &ctx,
                chunk,
                &std::collections::HashMap::new(),
                engine::Mode::Normal,
                &mut out,
            )
            .await?;
            tx.commit().await?;
        }
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await?;
    println!(
        "rebuilt incentive from {read} records in {:.2?} (replay {replayed:.2?}, then {recomputed} rep-periods recomputed); the ledger needed {} corrective postings",
        started.elapsed(),
        after - before
    );
    telemetry.shutdown().await;
    Ok(())
}
