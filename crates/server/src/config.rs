//! Settings every service shares. Each is a flag and an env var; a bad value fails at start
//! with a message naming the variable.

use std::net::SocketAddr;

use spm_bus::KafkaConfig;
use spm_telemetry::LogFormat;

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceConfig {
    /// Postgres connection URL. The service works in its own schema of this database.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        default_value = "postgres://spm@127.0.0.1:55432/spm"
    )]
    pub database_url: String,

    /// Most connections in the pool.
    #[arg(long = "db-max-connections", env = "SPM_DB_MAX_CONNECTIONS", value_name = "SPM_DB_MAX_CONNECTIONS",
          default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// Analyze the service's tables as they fill, between autovacuum's rounds
    /// (`spm_server::db::keep_statistics`).
    #[arg(long = "db-keep-statistics", env = "SPM_DB_KEEP_STATISTICS", value_name = "SPM_DB_KEEP_STATISTICS",
          default_value_t = true, action = clap::ArgAction::Set)]
    pub db_keep_statistics: bool,

    /// Address of the gRPC server.
    #[arg(
        long = "grpc-addr",
        env = "SPM_GRPC_ADDR",
        value_name = "SPM_GRPC_ADDR"
    )]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server (`/metrics`, `/healthz`, and service routes).
    #[arg(
        long = "http-addr",
        env = "SPM_HTTP_ADDR",
        value_name = "SPM_HTTP_ADDR"
    )]
    pub http_addr: SocketAddr,

    /// Log format: json or pretty.
    #[arg(
        long = "log-format",
        env = "SPM_LOG_FORMAT",
        value_name = "SPM_LOG_FORMAT",
        default_value = "json"
    )]
    pub log_format: LogFormat,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long = "grpc-max-message-bytes", env = "SPM_GRPC_MAX_MESSAGE_BYTES", value_name = "SPM_GRPC_MAX_MESSAGE_BYTES",
          default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..=64 * 1024 * 1024))]
    pub grpc_max_message_bytes: u32,

    #[command(flatten)]
    pub kafka: KafkaConfig,
}

impl ServiceConfig {
    pub fn max_message_bytes(&self) -> usize {
        self.grpc_max_message_bytes as usize
    }
}
