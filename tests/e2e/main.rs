//! End-to-end tests: every service a test needs runs as a real process against the real
//! Postgres and the real broker of the local stack (`deploy/local/stack up`), each test in
//! its own database and topic prefix.

mod audit;
mod broker;
mod connect;
mod faults;
mod incentive;
mod ingest;
mod notification;
mod ops;
mod order;
mod people;
mod plan_lifecycle;
mod portal;
mod reflection;
mod scoring;
mod spine;
