//! The connectors file (`SPM_CONNECT_CONFIG`, JSON): per tenant, the ingest key the
//! connector submits with, each CRM's connection and its field mapping. A secret may be
//! written as `"env:NAME"` to read it from the environment.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::domain::mapping::Mapping;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub tenants: Vec<TenantConnectors>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConnectors {
    pub tenant_id: String,
    /// An INTEGRATION key of the tenant, for ingest.
    pub ingest_key: String,
    #[serde(default)]
    pub salesforce: Option<Salesforce>,
    #[serde(default)]
    pub hubspot: Option<HubSpot>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Salesforce {
    /// `https://api.pubsub.salesforce.com:7443`.
    pub pubsub_url: String,
    /// The org's My Domain URL (the `instanceurl` header).
    pub instance_url: String,
    /// The org id (the `tenantid` header).
    pub org_id: String,
    /// An OAuth access token of the integration user (it expires with the session: prefer
    /// `oauth`).
    #[serde(default)]
    pub access_token: Option<String>,
    /// The OAuth 2.0 client credentials flow of a connected app: a token is fetched at
    /// start and again whenever Salesforce ends the session.
    #[serde(default)]
    pub oauth: Option<OAuth>,
    /// Topics: `/data/OpportunityChangeEvent`, a custom channel such as
    /// `/data/SpmSales__chn` (Opportunity, OpportunitySplit and OpportunityLineItem in one
    /// ordered stream, recommended), `/event/Payment_Received__e`.
    pub topics: Vec<String>,
    /// Events requested per FetchRequest (1..=100).
    #[serde(default = "default_batch")]
    pub batch: i32,
    pub mapping: Mapping,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth {
    /// `https://<my domain>.my.salesforce.com/services/oauth2/token`.
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
}

fn default_batch() -> i32 {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpot {
    /// The app's client secret (signs webhooks).
    pub app_secret: String,
    /// `https://api.hubapi.com`.
    #[serde(default = "default_hubspot_api")]
    pub api_base: String,
    /// A private app's access token (reads the CRM objects the webhooks name).
    pub token: String,
    pub mapping: Mapping,
}

fn default_hubspot_api() -> String {
    "https://api.hubapi.com".into()
}

fn secret(v: &mut String, what: &str) -> anyhow::Result<()> {
    if let Some(name) = v.strip_prefix("env:") {
        *v = std::env::var(name)
            .with_context(|| format!("{what}: environment variable {name} is not set"))?;
    }
    if v.trim().is_empty() {
        bail!("{what} is empty");
    }
    Ok(())
}

impl File {
    pub fn load(path: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading SPM_CONNECT_CONFIG {path}"))?;
        Self::parse(&text).with_context(|| format!("SPM_CONNECT_CONFIG {path}"))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut f: Self = serde_json::from_str(text).context("not a valid connectors file")?;
        let mut seen = BTreeMap::new();
        for t in &mut f.tenants {
            if seen.insert(t.tenant_id.clone(), ()).is_some() {
                bail!("tenant {} is configured twice", t.tenant_id);
            }
            let id = t.tenant_id.clone();
            secret(&mut t.ingest_key, &format!("tenants[{id}].ingest_key"))?;
            if let Some(s) = &mut t.salesforce {
                match (&mut s.access_token, &mut s.oauth) {
                    (Some(t), None) => {
                        secret(t, &format!("tenants[{id}].salesforce.access_token"))?
                    }
                    (None, Some(o)) => {
                        secret(
                            &mut o.client_secret,
                            &format!("tenants[{id}].salesforce.oauth.client_secret"),
                        )?;
                        secret(
                            &mut o.client_id,
                            &format!("tenants[{id}].salesforce.oauth.client_id"),
                        )?;
                    }
                    _ => {
                        bail!("tenants[{id}].salesforce: set exactly one of access_token and oauth")
                    }
                }
                s.mapping
                    .check()
                    .map_err(|e| anyhow::anyhow!("tenants[{id}].salesforce.mapping: {e}"))?;
                if !(1..=100).contains(&s.batch) {
                    bail!(
                        "tenants[{id}].salesforce.batch must be 1..=100, got {}",
                        s.batch
                    );
                }
                if s.mapping
                    .products
                    .as_ref()
                    .is_some_and(|p| p.deal.is_empty())
                {
                    bail!(
                        "tenants[{id}].salesforce.mapping.products.deal: name the line's deal field (OpportunityId)"
                    );
                }
                if s.topics.is_empty() {
                    bail!("tenants[{id}].salesforce.topics is empty");
                }
                for topic in &s.topics {
                    if !(topic.starts_with("/data/") || topic.starts_with("/event/")) {
                        bail!(
                            "tenants[{id}].salesforce.topics: {topic:?} is not /data/... or /event/..."
                        );
                    }
                }
            }
            if let Some(h) = &mut t.hubspot {
                secret(
                    &mut h.app_secret,
                    &format!("tenants[{id}].hubspot.app_secret"),
                )?;
                secret(&mut h.token, &format!("tenants[{id}].hubspot.token"))?;
                h.mapping
                    .check()
                    .map_err(|e| anyhow::anyhow!("tenants[{id}].hubspot.mapping: {e}"))?;
                if h.mapping.splits.is_some() {
                    bail!(
                        "tenants[{id}].hubspot.mapping.splits: HubSpot deal splits are not read; leave splits out (the owner is credited 100%)"
                    );
                }
                h.api_base = h.api_base.trim_end_matches('/').to_owned();
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(salesforce: serde_json::Value) -> String {
        let mut sf = json!({
            "pubsub_url": "https://api.pubsub.salesforce.com:7443",
            "instance_url": "https://acme.my.salesforce.com",
            "org_id": "00D5e000000XXXXEAA",
            "topics": ["/data/SpmSales__chn"],
            "mapping": {
                "deal": {"object": "Opportunity", "stage": "StageName",
                         "won_stages": ["Closed Won"], "lost_stages": ["Closed Lost"],
                         "open_stages": ["Prospecting"], "amount": "Amount",
                         "default_currency": "EUR", "close_date": "CloseDate",
                         "owner": "OwnerId"},
                "owners": {"pass_through": true}
            }
        });
        for (k, v) in salesforce.as_object().expect("object") {
            sf[k] = v.clone();
        }
        json!({"tenants": [{"tenant_id": "acme", "ingest_key": "k", "salesforce": sf}]}).to_string()
    }

    #[test]
    fn salesforce_takes_exactly_one_of_a_token_and_client_credentials() {
        let token = File::parse(&file(json!({"access_token": "00D!tok"}))).expect("token");
        let sf = token.tenants[0].salesforce.as_ref().expect("salesforce");
        assert_eq!(sf.access_token.as_deref(), Some("00D!tok"));
        assert!(sf.oauth.is_none());

        let oauth = json!({"token_url": "https://acme.my.salesforce.com/services/oauth2/token",
                           "client_id": "3MVG9", "client_secret": "env:SPM_TEST_SF_SECRET_UNSET"});
        let err = File::parse(&file(json!({ "oauth": oauth }))).expect_err("unset variable");
        assert!(
            format!("{err:#}").contains(
                "oauth.client_secret: environment variable SPM_TEST_SF_SECRET_UNSET is not set"
            ),
            "{err:#}"
        );
        let mut inline = oauth.clone();
        inline["client_secret"] = json!("s3cret");
        let f = File::parse(&file(json!({ "oauth": inline }))).expect("oauth");
        let o = f.tenants[0]
            .salesforce
            .as_ref()
            .and_then(|s| s.oauth.as_ref());
        assert_eq!(o.map(|o| o.client_secret.as_str()), Some("s3cret"));

        for (what, sf) in [
            ("neither", json!({})),
            ("both", json!({"access_token": "t", "oauth": inline})),
        ] {
            let err = File::parse(&file(sf)).expect_err(what);
            assert!(
                format!("{err:#}").contains("set exactly one of access_token and oauth"),
                "{what}: {err:#}"
            );
        }
        let mut typo = inline.clone();
        typo["client_secrt"] = json!("x");
        assert!(
            File::parse(&file(json!({ "oauth": typo }))).is_err(),
            "unknown key"
        );
    }

    #[test]
    fn mapping_parts_a_crm_cannot_serve_are_refused() {
        let lines = json!({"access_token": "t"});
        let mut f: serde_json::Value = serde_json::from_str(&file(lines)).expect("json");
        f["tenants"][0]["salesforce"]["mapping"]["products"] = json!({"object": "OpportunityLineItem",
            "product": "Product2Id", "quantity": "Quantity", "amount": "TotalPrice"});
        let err = File::parse(&f.to_string()).expect_err("no deal field");
        assert!(
            format!("{err:#}").contains("salesforce.mapping.products.deal"),
            "{err:#}"
        );

        let mut hs = f["tenants"][0]["salesforce"]["mapping"].clone();
        hs["splits"] = json!({"object": "deal_split", "deal": "d", "owner": "o", "percent": "p"});
        hs.as_object_mut().expect("object").remove("products");
        let f = json!({"tenants": [{"tenant_id": "acme", "ingest_key": "k",
            "hubspot": {"app_secret": "s", "token": "pat", "mapping": hs}}]});
        let err = File::parse(&f.to_string()).expect_err("hubspot splits");
        assert!(
            format!("{err:#}").contains("hubspot.mapping.splits: HubSpot deal splits are not read"),
            "{err:#}"
        );
    }
}
