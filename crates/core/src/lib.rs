//! Pure, I/O-free rules shared by every SPM service: money and currencies, the tenant's
//! fiscal calendar, Kafka keys, topic names and derived ids.

pub mod chain;
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
///
/// The same value as `Uuid::new_v5(SPM_NAMESPACE, parts.join("\u{1f}"))`, computed without
/// joining and with a SHA-1 that uses the CPU's SHA extensions: ingest derives two ids per
/// event, and uuid's portable SHA-1 was a tenth of its CPU.
pub fn derived_id(parts: &[&str]) -> Uuid {
    use sha1::Digest as _;
    let mut hash = sha1::Sha1::new();
    hash.update(SPM_NAMESPACE.as_bytes());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash.update([0x1f]);
        }
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
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

    /// Ids derived before (and by SQL migrations, with `uuid_generate_v5`) must not change.
    #[test]
    fn derived_ids_are_uuid_v5_of_the_joined_parts() {
        let cases: &[&[&str]] = &[
            &[],
            &[""],
            &["acme", "0f8fad5b-d9cb-469f-a165-70867728950e"],
            &["deal-1", "rep-a", "0.5"],
            &["a", "", "c"],
            &["ünïcödé", "x"],
        ];
        let long = "x".repeat(200);
        for parts in cases.iter().copied().chain([&[long.as_str(), "y"][..]]) {
            let v5 = Uuid::new_v5(&SPM_NAMESPACE, parts.join("\u{1f}").as_bytes());
            assert_eq!(derived_id(parts), v5, "{parts:?}");
            assert_eq!(derived_id(parts).get_version_num(), 5);
        }
    }
}
