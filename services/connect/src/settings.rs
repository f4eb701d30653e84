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
    /// An OAuth access token of the integration user.
    pub access_token: String,
    /// Topics: `/data/OpportunityChangeEvent`, a custom channel such as
    /// `/data/SpmSales__chn` (Opportunity, OpportunitySplit and OpportunityLineItem in one
    /// ordered stream, recommended), `/event/Payment_Received__e`.
    pub topics: Vec<String>,
    /// Events requested per FetchRequest (1..=100).
    #[serde(default = "default_batch")]
    pub batch: i32,
    pub mapping: Mapping,
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
                secret(
                    &mut s.access_token,
                    &format!("tenants[{id}].salesforce.access_token"),
                )?;
                s.mapping
                    .check()
                    .map_err(|e| anyhow::anyhow!("tenants[{id}].salesforce.mapping: {e}"))?;
                if !(1..=100).contains(&s.batch) {
                    bail!(
                        "tenants[{id}].salesforce.batch must be 1..=100, got {}",
                        s.batch
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
                h.api_base = h.api_base.trim_end_matches('/').to_owned();
            }
        }
        Ok(f)
    }
}
