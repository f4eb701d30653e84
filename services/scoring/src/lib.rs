//! The scoring service: metrics per rep, team and period from the activity and deal
//! streams; goals, weighted scorecards and explainable scores; leaderboards, team rollups,
//! live score changes, process alerts and goal calibration.

pub mod admin;
pub mod api;
pub mod consume;
pub mod domain;
pub mod engine;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use spm_core::topics;
use spm_proto::scoring::v1::scoring_admin_service_server::ScoringAdminServiceServer;
use spm_proto::scoring::v1::scoring_service_server::ScoringServiceServer;
use spm_server::grpc::GrpcServer;
use spm_server::{App, ServiceConfig};
use tokio::sync::broadcast;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "spm-scoring", about = "SPM scoring service")]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceConfig,

    /// How often process alerts are evaluated, seconds (0: only on request).
    #[arg(
        long = "alert-interval-secs",
        env = "SPM_ALERT_INTERVAL_SECS",
        value_name = "SPM_ALERT_INTERVAL_SECS",
        default_value_t = 300
    )]
    pub alert_interval_secs: u64,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve (the default).
    Serve,
    /// Rebuild every projection from the topics (stop the service first): clears facts,
    /// cells, scores and org, replays the topics from the beginning, and exits.
    Rebuild,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The topics scoring consumes.
pub const TOPICS: &[&str] = &[
    topics::TENANTS,
    topics::ORG,
    topics::ACTIVITIES,
    topics::DEALS,
];

pub async fn run(config: Config) -> anyhow::Result<()> {
    match config.command {
        Some(Command::Rebuild) => rebuild(config).await,
        _ => serve(config).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut app = App::start("scoring", config.service.clone(), &MIGRATOR).await?;
    app.consume("scoring", TOPICS, Arc::new(consume::ScoringHandler::live()));

    let (scores_tx, _) = broadcast::channel(4096);
    {
        let pool = app.pool.clone();
        let tx = scores_tx.clone();
        let cancel = app.cancel.clone();
        tokio::spawn(spm_server::listen::forward(
            pool,
            engine::NOTIFY_CHANNEL,
            tx,
            cancel,
        ));
    }
    let admin = admin::Admin {
        pool: app.pool.clone(),
        kafka: app.config.kafka.clone(),
        relay: app.relay_waker(),
    };
    if config.alert_interval_secs > 0 {
        let admin = admin.clone();
        let cancel = app.cancel.clone();
        let every = Duration::from_secs(config.alert_interval_secs);
        tokio::spawn(async move { alert_ticker(admin, every, cancel).await });
    }
    let api = api::Api {
        pool: app.pool.clone(),
        scores: scores_tx,
    };
    let max = app.config.max_message_bytes();
    let mut grpc = GrpcServer::new(app.keys.clone());
    grpc.add_service(
        ScoringServiceServer::new(api)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .add_service(
        ScoringAdminServiceServer::new(admin)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
    .people_may_call(PEOPLE_METHODS);
    app.serve(grpc, axum::Router::new()).await
}

async fn alert_ticker(
    admin: admin::Admin,
    every: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let tenants: Vec<String> =
            match sqlx::query_scalar("SELECT tenant_id FROM auth_tenants WHERE active")
                .fetch_all(&admin.pool)
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "alert ticker: cannot list tenants");
                    continue;
                }
            };
        for t in tenants {
            match admin::evaluate_alerts(&admin.pool, &admin.kafka, &t, chrono::Utc::now()).await {
                Ok(n) if n > 0 => tracing::info!(tenant = %t, raised = n, "process alerts raised"),
                Ok(_) => {}
                Err(e) => tracing::warn!(tenant = %t, error = %e, "alert evaluation failed"),
            }
        }
        admin.relay.notify_one();
    }
}

/// What signed-in people may call; each method scopes them (spm_server::access).
pub const PEOPLE_METHODS: &[&str] = &[
    "/spm.scoring.v1.ScoringService/GetScore",
    "/spm.scoring.v1.ScoringService/ExplainScore",
    "/spm.scoring.v1.ScoringService/GetMetrics",
    "/spm.scoring.v1.ScoringService/GetGoalProgress",
    "/spm.scoring.v1.ScoringService/GetLeaderboard",
    "/spm.scoring.v1.ScoringService/GetTeamRollup",
    "/spm.scoring.v1.ScoringService/WatchScores",
    "/spm.scoring.v1.ScoringService/GetGoalCalibration",
    "/spm.scoring.v1.ScoringService/ListProcessAlerts",
    "/spm.scoring.v1.ScoringAdminService/SetGoal",
    "/spm.scoring.v1.ScoringAdminService/ListGoals",
    "/spm.scoring.v1.ScoringAdminService/PutScorecard",
    "/spm.scoring.v1.ScoringAdminService/ListScorecards",
    "/spm.scoring.v1.ScoringAdminService/SetAlertSettings",
    "/spm.scoring.v1.ScoringAdminService/EvaluateProcessAlerts",
];

/// Tables rebuilt from the topics. Goals, scorecards, alert settings, milestones and
/// process alerts are admin data or history and stay.
pub const PROJECTIONS: &[&str] = &[
    "facts",
    "cells",
    "scores",
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

/// Rep-periods rescored per transaction at the end of a rebuild.
const RESCORE_CHUNK: usize = 2000;

async fn rebuild(config: Config) -> anyhow::Result<()> {
    let telemetry = spm_telemetry::init("spm-scoring-rebuild", config.service.log_format)?;
    let pool = spm_server::db::connect(
        &config.service.database_url,
        "scoring",
        config.service.db_max_connections,
    )
    .await?;
    spm_server::db::migrate(&pool, &MIGRATOR).await?;
    let started = std::time::Instant::now();
    let producer = spm_bus::Producer::new(&config.service.kafka)?;
    let deferred = consume::Deferred::default();
    let l = spm_bus::consumer::ConsumerLoop::new(
        &config.service.kafka,
        "scoring",
        TOPICS,
        pool.clone(),
        producer,
        Arc::new(consume::ScoringHandler {
            emit: false,
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
    // Every rep-period touched, scored once from its final cells.
    let tenants = std::mem::take(&mut *deferred.lock().expect("deferred"));
    let mut rescored = 0usize;
    for (tenant, (context, pairs)) in tenants {
        let pairs: Vec<_> = pairs.into_iter().collect();
        for chunk in pairs.chunks(RESCORE_CHUNK) {
            let mut job = engine::Job::new(&tenant, context.clone(), false);
            job.pairs = chunk.iter().cloned().collect();
            let mut tx = pool.begin().await?;
            let mut out = spm_bus::Outbox::new(&config.service.kafka);
            engine::rescore(&mut tx, &job, &mut out).await?;
            tx.commit().await?;
            rescored += chunk.len();
        }
    }
    tracing::info!(rescored, "rep-periods rescored");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM facts")
        .fetch_one(&pool)
        .await?;
    tracing::info!(records = read, facts = rows, elapsed = ?started.elapsed(), "rebuild done");
    println!(
        "rebuilt scoring from {read} records ({rows} facts) in {:.2?} (replay {replayed:.2?}, then {rescored} rep-periods scored)",
        started.elapsed()
    );
    telemetry.shutdown().await;
    Ok(())
}
