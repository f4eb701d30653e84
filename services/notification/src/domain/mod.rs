//! Pure rules of notification (no I/O): which events notify whom with what message (the
//! reason and the next step), quiet hours, rate limits, retry backoff and templates.

pub mod fatigue;
pub mod rules;
pub mod templates;
