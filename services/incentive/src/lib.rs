//! The incentive service.

pub mod domain;
