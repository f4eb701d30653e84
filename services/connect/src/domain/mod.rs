//! The connector's pure rules: field mapping, Salesforce payload decoding, HubSpot's
//! webhook contract. No I/O.

pub mod cdc;
pub mod hubspot;
pub mod mapping;
