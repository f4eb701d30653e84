//! Pure rules of ingest (no I/O): what a valid CRM event is, and how an accepted event
//! becomes the records published downstream (one credit per credited rep, base-currency
//! amounts at the FX rate in force on the event date).

pub mod accept;
pub mod validate;

pub use accept::{DealState, FxTable, IngestState, Outgoing, RepState};
pub use validate::{Limits, ValidEvent, ValidPayload, validate_event};
