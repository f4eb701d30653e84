//! Pure, I/O-free rules shared by every SPM service: money and currencies, the tenant's
//! fiscal calendar, Kafka keys, topic names and derived ids.

pub mod metrics;
pub mod money;
pub mod period;
pub mod signature;
pub mod topics;
pub mod validation;

use uuid::Uuid;

/// Namespace for ids SPM derives from other ids (fan-out credits, output events).
const SPM_NAMESPACE: Uuid = Uuid::from_u128(0x5c1f_3d2e_7b8a_4e61_9a0d_2f4b_6c8e_1a37);

/// A deterministic UUID (v5) for `parts`, so that replays and retries derive the same id.
pub fn derived_id(parts: &[&str]) -> Uuid {
    let joined = parts.join("\u{1f}");
    Uuid::new_v5(&SPM_NAMESPACE, joined.as_bytes())
}

/// The Kafka key of a tenant-scoped subject: `"<tenant>/<subject>"`. Every event of one rep
/// has the same key, hence the same partition and order.
pub fn kafka_key(tenant_id: &str, subject: &str) -> String {
    format!("{tenant_id}/{subject}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derived_id(&["evt-1", "rep-a"]);
        assert_eq!(a, derived_id(&["evt-1", "rep-a"]));
        assert_ne!(a, derived_id(&["evt-1", "rep-b"]));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(derived_id(&["ab", "c"]), derived_id(&["a", "bc"]));
    }
}
