//! Everything a SPM service binary needs besides its business: typed config, the Postgres
//! pool and migrations, the gRPC server (health, reflection, tracing, metrics, tenant
//! keys and people's OIDC tokens, size limits), what each role may see (`access`), the one mapping from errors to `tonic::Status`, the `/metrics`
//! endpoint and graceful shutdown.

pub mod access;
pub mod app;
pub mod audit;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod oidc;
pub mod org;
pub mod process;
pub mod shutdown;

pub use app::App;
pub use auth::{Caller, Person, Role};
pub use config::ServiceConfig;
pub use error::ApiError;
