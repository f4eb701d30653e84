//! HubSpot's webhook contract: the v3 request signature and the event payload.

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde::Deserialize;
use sha2::Sha256;

/// Requests whose `X-HubSpot-Request-Timestamp` is older than this are refused (HubSpot's
/// documented replay window).
pub const MAX_AGE_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigError {
    Missing(&'static str),
    BadTimestamp,
    Stale { age_ms: i64 },
    Mismatch,
}

impl std::fmt::Display for SigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(h) => write!(f, "header {h} is missing"),
            Self::BadTimestamp => {
                write!(f, "X-HubSpot-Request-Timestamp is not epoch milliseconds")
            }
            Self::Stale { age_ms } => write!(
                f,
                "X-HubSpot-Request-Timestamp is {}s old; requests older than 5 minutes are refused",
                age_ms / 1000
            ),
            Self::Mismatch => write!(f, "X-HubSpot-Signature-v3 does not match the request"),
        }
    }
}

impl SigError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_header",
            Self::BadTimestamp | Self::Stale { .. } => "stale_timestamp",
            Self::Mismatch => "bad_signature",
        }
    }
}

/// The v3 signature: base64 of HMAC-SHA256(app secret, method + URI + body + timestamp),
/// the URI being the full URL HubSpot called.
pub fn sign_v3(secret: &str, method: &str, uri: &str, body: &[u8], timestamp: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(
        mac_v3(secret, method, uri, body, timestamp)
            .finalize()
            .into_bytes(),
    )
}

fn mac_v3(secret: &str, method: &str, uri: &str, body: &[u8], timestamp: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac
}

/// Checks a request's v3 signature and timestamp against `now_ms`.
pub fn verify_v3(
    secret: &str,
    method: &str,
    uri: &str,
    body: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    now_ms: i64,
) -> Result<(), SigError> {
    let ts = timestamp.ok_or(SigError::Missing("X-HubSpot-Request-Timestamp"))?;
    let sig = signature.ok_or(SigError::Missing("X-HubSpot-Signature-v3"))?;
    let at: i64 = ts.trim().parse().map_err(|_| SigError::BadTimestamp)?;
    let age_ms = now_ms - at;
    if age_ms > MAX_AGE_MS {
        return Err(SigError::Stale { age_ms });
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.trim())
        .map_err(|_| SigError::Mismatch)?;
    // Constant time.
    mac_v3(secret, method, uri, body, ts)
        .verify_slice(&sig)
        .map_err(|_| SigError::Mismatch)
}

/// One event of a webhook request (HubSpot sends a JSON array of up to 100).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    pub event_id: u64,
    #[serde(default)]
    pub subscription_id: u64,
    #[serde(default)]
    pub portal_id: u64,
    #[serde(default)]
    pub app_id: u64,
    /// Epoch milliseconds.
    pub occurred_at: i64,
    /// `deal.creation`, `deal.propertyChange`, `deal.deletion`, `call.creation`, ...
    pub subscription_type: String,
    #[serde(default)]
    pub attempt_number: u32,
    pub object_id: u64,
    #[serde(default)]
    pub property_name: Option<String>,
    #[serde(default)]
    pub property_value: Option<String>,
    #[serde(default)]
    pub change_source: Option<String>,
}

impl WebhookEvent {
    /// The object type and the change: (`deal`, `propertyChange`).
    pub fn kind(&self) -> (&str, &str) {
        self.subscription_type
            .split_once('.')
            .unwrap_or((self.subscription_type.as_str(), ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_signatures_cover_method_uri_body_and_time() {
        let (secret, uri, body) = (
            "s3cret",
            "https://spm.example/hubspot/acme",
            br#"[{"eventId":1}]"#,
        );
        let now = 1_767_000_000_000_i64;
        let ts = (now - 1000).to_string();
        let sig = sign_v3(secret, "POST", uri, body, &ts);
        assert_eq!(
            verify_v3(secret, "POST", uri, body, Some(&ts), Some(&sig), now),
            Ok(())
        );
        for (m, u, b, s) in [
            ("GET", uri, &body[..], secret),
            (
                "POST",
                "https://spm.example/hubspot/other",
                &body[..],
                secret,
            ),
            ("POST", uri, &br#"[{"eventId":2}]"#[..], secret),
            ("POST", uri, &body[..], "other"),
        ] {
            assert_eq!(
                verify_v3(s, m, u, b, Some(&ts), Some(&sig), now),
                Err(SigError::Mismatch),
                "{m} {u}"
            );
        }
        let old = (now - MAX_AGE_MS - 1).to_string();
        let sig_old = sign_v3(secret, "POST", uri, body, &old);
        assert!(matches!(
            verify_v3(secret, "POST", uri, body, Some(&old), Some(&sig_old), now),
            Err(SigError::Stale { .. })
        ));
        assert_eq!(
            verify_v3(secret, "POST", uri, body, None, Some(&sig), now),
            Err(SigError::Missing("X-HubSpot-Request-Timestamp"))
        );
    }

    #[test]
    fn webhook_events_parse_as_documented() {
        let body = r#"[{"eventId":100,"subscriptionId":7,"portalId":62515,"appId":54321,
            "occurredAt":1767000000000,"subscriptionType":"deal.propertyChange",
            "attemptNumber":0,"objectId":9001,"propertyName":"dealstage",
            "propertyValue":"closedwon","changeSource":"CRM"}]"#;
        let evs: Vec<WebhookEvent> = serde_json::from_str(body).expect("parses");
        assert_eq!(evs[0].kind(), ("deal", "propertyChange"));
        assert_eq!(evs[0].object_id, 9001);
    }
}
