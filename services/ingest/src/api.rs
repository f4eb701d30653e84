//! The gRPC API of ingest: `IngestService` (events in) and `IngestAdminService`.

use std::pin::Pin;

use chrono::{NaiveDate, Utc};
use futures::{Stream, StreamExt as _};
use spm_bus::Outbox;
use spm_core::money::{Currency, parse_decimal};
use spm_core::period::Calendar;
use spm_core::topics;
use spm_core::validation::{FieldViolation, Violations};
use spm_proto::common::v1::TenantContext;
use spm_proto::events::v1 as ev;
use spm_proto::events::v1::event_envelope::Payload;
use spm_proto::ingest::v1 as pb;
use spm_proto::ingest::v1::ingest_admin_service_server::IngestAdminService;
use spm_proto::ingest::v1::ingest_service_server::IngestService;
use spm_server::ApiError;
use spm_server::auth::{self, Role, caller};
use spm_server::oidc;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::pipeline::Pipeline;

/// Most events in one request (unary batch or one stream message).
#[derive(Debug, Clone, Copy)]
pub struct BatchLimit(pub usize);

#[derive(Clone)]
pub struct Api {
    pub pipeline: Pipeline,
    pub max_batch: BatchLimit,
    pub admin_token: Option<String>,
    pub relay: std::sync::Arc<tokio::sync::Notify>,
}

fn prefixed(violations: &[pb::EventAck], i: usize, prefix: &str) -> Vec<FieldViolation> {
    violations[i]
        .violations
        .iter()
        .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()).under(prefix))
        .collect()
}

impl Api {
    fn check_batch(&self, n: usize) -> Result<(), ApiError> {
        if n == 0 {
            return Err(ApiError::invalid(
                "events",
                "at least one event is required",
            ));
        }
        if n > self.max_batch.0 {
            return Err(ApiError::invalid(
                "events",
                format!("at most {} events per request, got {n}", self.max_batch.0),
            ));
        }
        Ok(())
    }
}

type AckStream =
    Pin<Box<dyn Stream<Item = Result<pb::StreamEventsResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl IngestService for Api {
    async fn submit_event(
        &self,
        req: Request<pb::SubmitEventRequest>,
    ) -> Result<Response<pb::SubmitEventResponse>, Status> {
        let c = caller(&req)?;
        let tenant = self.pipeline.tenant(&c.tenant_id).await?;
        let event = req
            .into_inner()
            .event
            .ok_or_else(|| ApiError::invalid("event", "is required"))?;
        let event_id = event.event_id.clone();
        let acks = self.pipeline.submit(&tenant, vec![event]).await?;
        let ack = acks.into_iter().next().expect("one ack per event");
        match pb::AckStatus::try_from(ack.status) {
            Ok(pb::AckStatus::Rejected) => {
                Err(ApiError::InvalidArgument(prefixed(&[ack], 0, "event")).into())
            }
            Ok(pb::AckStatus::Conflict) => Err(ApiError::AlreadyExists(format!(
                "event {event_id} was already accepted with different content"
            ))
            .into()),
            Ok(pb::AckStatus::Unavailable) => Err(ApiError::unavailable(ack.message).into()),
            _ => Ok(Response::new(pb::SubmitEventResponse { ack: Some(ack) })),
        }
    }

    async fn submit_events(
        &self,
        req: Request<pb::SubmitEventsRequest>,
    ) -> Result<Response<pb::SubmitEventsResponse>, Status> {
        let c = caller(&req)?;
        let events = req.into_inner().events;
        self.check_batch(events.len())?;
        let tenant = self.pipeline.tenant(&c.tenant_id).await?;
        let acks = self.pipeline.submit(&tenant, events).await?;
        Ok(Response::new(pb::SubmitEventsResponse { acks }))
    }

    type StreamEventsStream = AckStream;

    /// Messages of one stream are processed in order (a payment may follow its deal in the
    /// next message); open several streams for parallelism.
    async fn stream_events(
        &self,
        req: Request<Streaming<pb::StreamEventsRequest>>,
    ) -> Result<Response<AckStream>, Status> {
        let c = caller(&req)?;
        let tenant = self.pipeline.tenant(&c.tenant_id).await?;
        let pipeline = self.pipeline.clone();
        let api = self.clone();
        let inbound = req.into_inner();
        let out = inbound.then(move |msg| {
            let pipeline = pipeline.clone();
            let tenant = tenant.clone();
            let api = api.clone();
            async move {
                let msg = msg?;
                api.check_batch(msg.events.len())?;
                let acks = pipeline.submit(&tenant, msg.events).await?;
                Ok(pb::StreamEventsResponse { acks })
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

fn check_context(v: &mut Violations, ctx: Option<&TenantContext>) -> TenantContext {
    let mut c = ctx.cloned().unwrap_or_default();
    if c.time_zone.is_empty() {
        c.time_zone = "UTC".into();
    }
    if c.fiscal_year_start_month == 0 {
        c.fiscal_year_start_month = 1;
    }
    if let Err(e) = Calendar::new(&c.time_zone, c.fiscal_year_start_month) {
        let field = match e {
            spm_core::period::Error::BadFiscalStart(_) => "context.fiscal_year_start_month",
            _ => "context.time_zone",
        };
        v.add(field, e.to_string());
    }
    if c.base_currency.is_empty() {
        v.add("context.base_currency", "is required");
    } else if let Err(e) = Currency::new(&c.base_currency) {
        v.add("context.base_currency", e.to_string());
    }
    c
}

fn admin_envelope(tenant_id: &str, ctx: &TenantContext, payload: Payload) -> ev::EventEnvelope {
    let now = spm_proto::ext::timestamp(Utc::now());
    ev::EventEnvelope {
        event_id: Uuid::new_v4().to_string(),
        tenant_id: tenant_id.to_owned(),
        occurred_at: Some(now),
        recorded_at: Some(now),
        source: "spm-ingest-admin".into(),
        tenant_context: Some(ctx.clone()),
        causation_id: String::new(),
        payload: Some(payload),
    }
}

fn tenant_pb(
    tenant_id: &str,
    name: &str,
    ctx: TenantContext,
    active: bool,
    peer_view: ev::PeerView,
) -> pb::Tenant {
    pb::Tenant {
        tenant_id: tenant_id.to_owned(),
        name: name.to_owned(),
        context: Some(ctx),
        active,
        created_at: None,
        leaderboard_peer_view: peer_view as i32,
    }
}

fn person_pb(
    login: String,
    role: Role,
    rep_id: String,
    active: bool,
    display_name: String,
) -> pb::Person {
    pb::Person {
        login,
        role: role.to_person_proto() as i32,
        rep_id,
        active,
        display_name,
    }
}

impl Api {
    fn operator(&self, req: &Request<pb::CreateTenantRequest>) -> Result<(), ApiError> {
        let Some(expected) = self.admin_token.as_deref() else {
            return Err(ApiError::PermissionDenied(
                "tenant creation is disabled: SPM_ADMIN_TOKEN is not set on ingest".into(),
            ));
        };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthenticated(
                "CreateTenant needs 'authorization: Bearer <SPM_ADMIN_TOKEN>'".into(),
            ))?;
        if auth::constant_time_eq(got.trim().as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthenticated(
                "invalid operator admin token".into(),
            ))
        }
    }

    async fn emit_and_commit(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        events: Vec<(String, ev::EventEnvelope)>,
    ) -> Result<(), ApiError> {
        let mut out = Outbox::new(&self.pipeline.kafka);
        let span = tracing::Span::current();
        for (key, env) in &events {
            out.emit(&span, topics::TENANTS, key.clone(), env);
        }
        out.write(&mut tx).await?;
        tx.commit().await?;
        self.relay.notify_one();
        Ok(())
    }

    async fn admin(
        &self,
        req: &Request<impl Sized>,
    ) -> Result<(auth::Caller, crate::domain::accept::Tenant), ApiError> {
        let c = caller(req)?;
        c.require_admin()?;
        let t = self.pipeline.tenant(&c.tenant_id).await?;
        Ok((c, t))
    }
}

#[tonic::async_trait]
impl IngestAdminService for Api {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        self.operator(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let slug_ok = (3..=40).contains(&r.tenant_id.len())
            && r.tenant_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !r.tenant_id.starts_with('-');
        if !slug_ok {
            v.add("tenant_id", "must be 3..=40 characters of a-z, 0-9 and '-'");
        }
        if r.name.trim().is_empty() {
            v.add("name", "is required");
        }
        v.text("name", &r.name, 200);
        let ctx = check_context(&mut v, r.context.as_ref());
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;

        let pool = &self.pipeline.pool;
        let mut tx = pool.begin().await.map_err(ApiError::from)?;
        let inserted = sqlx::query(
            "INSERT INTO auth_tenants (tenant_id, name, time_zone, fiscal_year_start_month, base_currency, active, updated_at)
             VALUES ($1, $2, $3, $4, $5, true, now()) ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(&r.tenant_id)
        .bind(&r.name)
        .bind(&ctx.time_zone)
        .bind(i32::try_from(ctx.fiscal_year_start_month).unwrap_or(1))
        .bind(&ctx.base_currency)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?
        .rows_affected();
        if inserted == 0 {
            return Err(
                ApiError::AlreadyExists(format!("tenant {} already exists", r.tenant_id)).into(),
            );
        }
        let key = auth::generate_key();
        insert_key(
            &mut tx,
            &r.tenant_id,
            &key,
            Role::Admin,
            "initial admin key",
        )
        .await?;
        let secret = auth::generate_secret();
        sqlx::query("INSERT INTO tenant_secrets (tenant_id, webhook_secret) VALUES ($1, $2)")
            .bind(&r.tenant_id)
            .bind(&secret)
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
        spm_server::audit::record_as(
            &mut tx,
            &r.tenant_id,
            "operator",
            "operator",
            spm_server::audit::Action::new(
                "ingest",
                "tenant.create",
                format!("tenant:{}", r.tenant_id),
            )
            .after(serde_json::json!({
                "name": r.name,
                "time_zone": ctx.time_zone,
                "fiscal_year_start_month": ctx.fiscal_year_start_month,
                "base_currency": ctx.base_currency,
                "admin_key_id": key.key_id,
            })),
        )
        .await
        .map_err(ApiError::from)?;
        let events = vec![
            (
                r.tenant_id.clone(),
                admin_envelope(
                    &r.tenant_id,
                    &ctx,
                    Payload::TenantUpserted(ev::TenantUpserted {
                        name: r.name.clone(),
                        context: Some(ctx.clone()),
                        active: true,
                        leaderboard_peer_view: ev::PeerView::Names as i32,
                    }),
                ),
            ),
            key_event(&r.tenant_id, &ctx, &key, Role::Admin, "initial admin key"),
        ];
        self.emit_and_commit(tx, events).await?;
        tracing::info!(tenant = %r.tenant_id, "tenant created");
        Ok(Response::new(pb::CreateTenantResponse {
            tenant: Some(tenant_pb(
                &r.tenant_id,
                &r.name,
                ctx,
                true,
                ev::PeerView::Names,
            )),
            admin_api_key: key.key,
            admin_key_id: key.key_id,
            webhook_secret: secret,
        }))
    }

    async fn update_tenant(
        &self,
        req: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::UpdateTenantResponse>, Status> {
        let (c, _) = self.admin(&req).await?;
        let r = req.into_inner();
        let mut v = Violations::new();
        if r.name.trim().is_empty() {
            v.add("name", "is required");
        }
        v.text("name", &r.name, 200);
        let ctx = check_context(&mut v, r.context.as_ref());
        let peer_view = match ev::PeerView::try_from(r.leaderboard_peer_view) {
            Ok(ev::PeerView::Unspecified) | Err(_) if r.leaderboard_peer_view != 0 => {
                v.add("leaderboard_peer_view", "is not a PeerView value");
                ev::PeerView::Names
            }
            Ok(ev::PeerView::Unspecified) | Err(_) => ev::PeerView::Names,
            Ok(p) => p,
        };
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let mut tx = self.pipeline.pool.begin().await.map_err(ApiError::from)?;
        let before: Option<(String, String, i32, String, String)> = sqlx::query_as(
            "SELECT name, time_zone, fiscal_year_start_month, base_currency, peer_view FROM auth_tenants WHERE tenant_id = $1 FOR UPDATE",
        )
        .bind(&c.tenant_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let tenant_json = |name: &str, tz: &str, fy: i64, cur: &str, view: &str| serde_json::json!({"name": name, "time_zone": tz, "fiscal_year_start_month": fy, "base_currency": cur, "leaderboard_peer_view": view});
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new(
                "ingest",
                "tenant.update",
                format!("tenant:{}", c.tenant_id),
            )
            .before(before.map(|b| tenant_json(&b.0, &b.1, i64::from(b.2), &b.3, &b.4)))
            .after(tenant_json(
                &r.name,
                &ctx.time_zone,
                i64::from(ctx.fiscal_year_start_month),
                &ctx.base_currency,
                auth::peer_view_str(peer_view),
            )),
        )
        .await
        .map_err(ApiError::from)?;
        sqlx::query(
            "UPDATE auth_tenants SET name = $2, time_zone = $3, fiscal_year_start_month = $4, base_currency = $5,
                    peer_view = $6, updated_at = now()
              WHERE tenant_id = $1",
        )
        .bind(&c.tenant_id)
        .bind(&r.name)
        .bind(&ctx.time_zone)
        .bind(i32::try_from(ctx.fiscal_year_start_month).unwrap_or(1))
        .bind(&ctx.base_currency)
        .bind(auth::peer_view_str(peer_view))
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let env = admin_envelope(
            &c.tenant_id,
            &ctx,
            Payload::TenantUpserted(ev::TenantUpserted {
                name: r.name.clone(),
                context: Some(ctx.clone()),
                active: true,
                leaderboard_peer_view: peer_view as i32,
            }),
        );
        self.emit_and_commit(tx, vec![(c.tenant_id.clone(), env)])
            .await?;
        self.pipeline.forget_tenant(&c.tenant_id);
        Ok(Response::new(pb::UpdateTenantResponse {
            tenant: Some(tenant_pb(&c.tenant_id, &r.name, ctx, true, peer_view)),
        }))
    }

    async fn get_tenant(
        &self,
        req: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let c = caller(&req)?;
        let (t, name, active) = crate::store::tenant(&self.pipeline.pool, &c.tenant_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("tenant {}", c.tenant_id)))?;
        let view = auth::peer_view(&self.pipeline.pool, &c.tenant_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetTenantResponse {
            tenant: Some(tenant_pb(&c.tenant_id, &name, t.context, active, view)),
        }))
    }

    async fn issue_api_key(
        &self,
        req: Request<pb::IssueApiKeyRequest>,
    ) -> Result<Response<pb::IssueApiKeyResponse>, Status> {
        let (c, t) = self.admin(&req).await?;
        let r = req.into_inner();
        let role = Role::from_proto(r.role())
            .ok_or_else(|| ApiError::invalid("role", "must be INTEGRATION or ADMIN"))?;
        let mut v = Violations::new();
        v.text("label", &r.label, 200);
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let key = auth::generate_key();
        let mut tx = self.pipeline.pool.begin().await.map_err(ApiError::from)?;
        insert_key(&mut tx, &c.tenant_id, &key, role, &r.label).await?;
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new(
                "ingest",
                "api_key.issue",
                format!("api_key:{}", key.key_id),
            )
            .after(
                serde_json::json!({"key_id": key.key_id, "role": role.as_str(), "label": r.label}),
            ),
        )
        .await
        .map_err(ApiError::from)?;
        self.emit_and_commit(
            tx,
            vec![key_event(&c.tenant_id, &t.context, &key, role, &r.label)],
        )
        .await?;
        Ok(Response::new(pb::IssueApiKeyResponse {
            key_id: key.key_id,
            api_key: key.key,
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let (c, t) = self.admin(&req).await?;
        let r = req.into_inner();
        let mut tx = self.pipeline.pool.begin().await.map_err(ApiError::from)?;
        let before: Option<(String, String, bool)> = sqlx::query_as(
            "SELECT role, label, revoked_at IS NOT NULL FROM auth_keys WHERE tenant_id = $1 AND key_id = $2 FOR UPDATE",
        )
        .bind(&c.tenant_id)
        .bind(&r.key_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let Some((role, label, revoked)) = before else {
            return Err(ApiError::NotFound(format!("key {} of this tenant", r.key_id)).into());
        };
        sqlx::query(
            "UPDATE auth_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE tenant_id = $1 AND key_id = $2",
        )
        .bind(&c.tenant_id)
        .bind(&r.key_id)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let key_json = |revoked: bool| serde_json::json!({"key_id": r.key_id, "role": role, "label": label, "revoked": revoked});
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new(
                "ingest",
                "api_key.revoke",
                format!("api_key:{}", r.key_id),
            )
            .before(key_json(revoked))
            .after(key_json(true)),
        )
        .await
        .map_err(ApiError::from)?;
        let env = admin_envelope(
            &c.tenant_id,
            &t.context,
            Payload::ApiKeyRevoked(ev::ApiKeyRevoked {
                key_id: r.key_id.clone(),
            }),
        );
        let key = spm_core::kafka_key(&c.tenant_id, &format!("key:{}", r.key_id));
        self.emit_and_commit(tx, vec![(key, env)]).await?;
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        req: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let (c, _) = self.admin(&req).await?;
        let secret = auth::generate_secret();
        let mut tx = self.pipeline.pool.begin().await.map_err(ApiError::from)?;
        sqlx::query(
            "UPDATE tenant_secrets SET previous_secret = webhook_secret, webhook_secret = $2, rotated_at = now()
              WHERE tenant_id = $1",
        )
        .bind(&c.tenant_id)
        .bind(&secret)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        // Never the secrets themselves: only that the previous one still verifies.
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new(
                "ingest",
                "webhook_secret.rotate",
                format!("tenant:{}", c.tenant_id),
            )
            .after(serde_json::json!({"rotated": true, "previous_secret_still_accepted": true})),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::RotateWebhookSecretResponse {
            webhook_secret: secret,
        }))
    }

    async fn set_fx_rate(
        &self,
        req: Request<pb::SetFxRateRequest>,
    ) -> Result<Response<pb::SetFxRateResponse>, Status> {
        let (c, t) = self.admin(&req).await?;
        let rate = req
            .into_inner()
            .rate
            .ok_or_else(|| ApiError::invalid("rate", "is required"))?;
        let mut v = Violations::new();
        match Currency::new(&rate.currency) {
            Ok(cur) if cur == t.base => v.add(
                "rate.currency",
                "is the tenant's base currency (its rate is always 1)",
            ),
            Ok(_) => {}
            Err(e) => v.add("rate.currency", e.to_string()),
        }
        let value = match parse_decimal(&rate.rate) {
            Ok(r) if r > rust_decimal::Decimal::ZERO => Some(r),
            Ok(_) => {
                v.add("rate.rate", "must be greater than zero");
                None
            }
            Err(e) => {
                v.add("rate.rate", e.to_string());
                None
            }
        };
        let from = match NaiveDate::parse_from_str(&rate.effective_from, "%Y-%m-%d") {
            Ok(d) => Some(d),
            Err(_) => {
                v.add("rate.effective_from", "must be a date YYYY-MM-DD");
                None
            }
        };
        let (Some(value), Some(from)) = (value, from) else {
            return Err(ApiError::InvalidArgument(v.0).into());
        };
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let mut tx = self.pipeline.pool.begin().await.map_err(ApiError::from)?;
        let before = crate::store::set_fx_rate(&mut tx, &c.tenant_id, &rate.currency, from, value)
            .await
            .map_err(ApiError::from)?;
        let rate_json = |r: rust_decimal::Decimal| serde_json::json!({"currency": rate.currency, "effective_from": from.to_string(), "rate": spm_core::chain::decimal(r)});
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new(
                "ingest",
                "fx_rate.set",
                format!("fx_rate:{}/{from}", rate.currency),
            )
            .before(before.map(rate_json))
            .after(rate_json(value)),
        )
        .await
        .map_err(ApiError::from)?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(pb::SetFxRateResponse {
            rate: Some(pb::FxRate {
                currency: rate.currency,
                rate: value.normalize().to_string(),
                effective_from: from.to_string(),
            }),
        }))
    }

    async fn list_fx_rates(
        &self,
        req: Request<pb::ListFxRatesRequest>,
    ) -> Result<Response<pb::ListFxRatesResponse>, Status> {
        let c = caller(&req)?;
        c.require_tenant_reader()?;
        let r = req.into_inner();
        let rows = crate::store::fx_rates(&self.pipeline.pool, &c.tenant_id, &r.currency)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListFxRatesResponse {
            rates: rows
                .into_iter()
                .map(|(currency, from, rate)| pb::FxRate {
                    currency,
                    rate: rate.normalize().to_string(),
                    effective_from: from.to_string(),
                })
                .collect(),
        }))
    }

    async fn list_parked_events(
        &self,
        req: Request<pb::ListParkedEventsRequest>,
    ) -> Result<Response<pb::ListParkedEventsResponse>, Status> {
        let (c, _) = self.admin(&req).await?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let waiting_for = r.waiting_for.trim();
        let waiting_for = match waiting_for {
            "" => None,
            "rep" | "deal" => Some(waiting_for.to_owned()),
            w if crate::domain::accept::Ref::parse(w).is_some() => Some(w.to_owned()),
            _ => {
                v.add(
                    "waiting_for",
                    "must be \"rep\", \"deal\", \"rep:<rep_id>\" or \"deal:<deal_id>\"",
                );
                None
            }
        };
        if r.limit > 1000 {
            v.add("limit", "at most 1000");
        }
        let mut states = Vec::new();
        for (i, st) in r.states.iter().enumerate() {
            match pb::ParkedState::try_from(*st) {
                Ok(pb::ParkedState::Unspecified) | Err(_) => {
                    v.add(
                        format!("states[{i}]"),
                        "must be a ParkedState other than UNSPECIFIED",
                    );
                }
                Ok(s) => states.push(parked_state_name(s).to_owned()),
            }
        }
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        if states.is_empty() {
            states = vec!["waiting".into(), "failed".into()];
        }
        let filter = crate::store::ParkedFilter {
            waiting_for,
            parked_before: (r.older_than_seconds > 0)
                .then(|| Utc::now() - chrono::Duration::seconds(i64::from(r.older_than_seconds))),
            states,
            limit: if r.limit == 0 {
                100
            } else {
                i64::from(r.limit)
            },
        };
        let (rows, total) = crate::store::list_parked(&self.pipeline.pool, &c.tenant_id, &filter)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListParkedEventsResponse {
            events: rows.into_iter().map(parked_pb).collect(),
            total: u64::try_from(total).unwrap_or(0),
        }))
    }

    async fn discard_parked_event(
        &self,
        req: Request<pb::DiscardParkedEventRequest>,
    ) -> Result<Response<pb::DiscardParkedEventResponse>, Status> {
        let (c, _) = self.admin(&req).await?;
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = match Uuid::try_parse(&r.event_id) {
            Ok(id) => Some(id),
            Err(_) => {
                v.add("event_id", "must be the UUID of a parked event");
                None
            }
        };
        let reason = r.reason.trim();
        if reason.is_empty() {
            v.add("reason", "is required: say why the event is given up");
        } else if reason.chars().count() > 1000 {
            v.add("reason", "at most 1000 characters");
        }
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let id = id.expect("a bad event_id is a violation above");
        let by = format!("key:{}", c.key_id);
        let row =
            crate::store::discard_parked(&self.pipeline.pool, &c, id, &by, reason, Utc::now())
                .await
                .map_err(ApiError::from)?;
        match row {
            None => Err(ApiError::NotFound(format!("no parked event {id}")).into()),
            Some(Err(state)) => Err(ApiError::FailedPrecondition(format!(
                "parked event {id} is {state}; only waiting or failed events can be discarded"
            ))
            .into()),
            Some(Ok(row)) => {
                tracing::info!(tenant = %c.tenant_id, event_id = %id, by = %by, reason, "parked event discarded");
                Ok(Response::new(pb::DiscardParkedEventResponse {
                    event: Some(parked_pb(row)),
                }))
            }
        }
    }

    async fn set_identity_provider(
        &self,
        req: Request<pb::SetIdentityProviderRequest>,
    ) -> Result<Response<pb::SetIdentityProviderResponse>, Status> {
        let (c, t) = self.admin(&req).await?;
        let p = req.into_inner().provider.unwrap_or_default();
        let mut v = Violations::new();
        let issuer = p.issuer.trim().to_owned();
        let audience = p.audience.trim().to_owned();
        let claim = if p.person_claim.trim().is_empty() {
            "email".to_owned()
        } else {
            p.person_claim.trim().to_owned()
        };
        let mut jwks_uri = String::new();
        if !issuer.is_empty() {
            if let Err(e) = oidc::check_issuer_url(&issuer) {
                v.add("provider.issuer", e);
            }
            if audience.is_empty() {
                v.add(
                    "provider.audience",
                    "is required: the aud your provider puts in SPM's tokens",
                );
            }
            v.text("provider.audience", &audience, 200);
            if claim.len() > 64
                || !claim
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b))
            {
                v.add(
                    "provider.person_claim",
                    "must be a claim name such as email or sub",
                );
            }
        }
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        if !issuer.is_empty() {
            // Only a provider that answers is stored: a typo must not lock everyone out later.
            match oidc::discover(oidc::shared_http(), &issuer).await {
                Ok(doc) => jwks_uri = doc.jwks_uri,
                Err(e) => return Err(ApiError::invalid("provider.issuer", e).into()),
            }
            let taken: Option<String> = sqlx::query_scalar(
                "SELECT tenant_id FROM auth_idps WHERE issuer = $1 AND audience = $2 AND tenant_id <> $3",
            )
            .bind(&issuer)
            .bind(&audience)
            .bind(&c.tenant_id)
            .fetch_optional(&self.pipeline.pool)
            .await
            .map_err(ApiError::from)?;
            if taken.is_some() {
                return Err(ApiError::invalid(
                    "provider.audience",
                    "another tenant already uses this issuer with this audience; tokens must name one tenant",
                )
                .into());
            }
        }
        let mut tx = self.pipeline.pool.begin().await.map_err(ApiError::from)?;
        let before: Option<(String, String, String)> = sqlx::query_as(
            "SELECT issuer, audience, person_claim FROM auth_idps WHERE tenant_id = $1 FOR UPDATE",
        )
        .bind(&c.tenant_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let idp_json = |i: &str, a: &str, p: &str| serde_json::json!({"issuer": i, "audience": a, "person_claim": p});
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new(
                "ingest",
                "identity_provider.set",
                format!("tenant:{}", c.tenant_id),
            )
            .before(before.map(|b| idp_json(&b.0, &b.1, &b.2)))
            .after(idp_json(&issuer, &audience, &claim)),
        )
        .await
        .map_err(ApiError::from)?;
        sqlx::query(
            "INSERT INTO auth_idps (tenant_id, issuer, audience, person_claim, updated_at) VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (tenant_id) DO UPDATE SET issuer = EXCLUDED.issuer, audience = EXCLUDED.audience,
               person_claim = EXCLUDED.person_claim, updated_at = EXCLUDED.updated_at",
        )
        .bind(&c.tenant_id)
        .bind(&issuer)
        .bind(&audience)
        .bind(&claim)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let env = admin_envelope(
            &c.tenant_id,
            &t.context,
            Payload::IdentityProviderSet(ev::IdentityProviderSet {
                issuer: issuer.clone(),
                audience: audience.clone(),
                person_claim: claim.clone(),
            }),
        );
        self.emit_and_commit(tx, vec![(spm_core::kafka_key(&c.tenant_id, "idp"), env)])
            .await?;
        tracing::info!(tenant = %c.tenant_id, %issuer, "identity provider set");
        Ok(Response::new(pb::SetIdentityProviderResponse {
            provider: (!issuer.is_empty()).then_some(pb::IdentityProvider {
                issuer,
                audience,
                person_claim: claim,
                jwks_uri,
            }),
        }))
    }

    async fn get_identity_provider(
        &self,
        req: Request<pb::GetIdentityProviderRequest>,
    ) -> Result<Response<pb::GetIdentityProviderResponse>, Status> {
        let (c, _) = self.admin(&req).await?;
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT issuer, audience, person_claim FROM auth_idps WHERE tenant_id = $1 AND issuer <> ''",
        )
        .bind(&c.tenant_id)
        .fetch_optional(&self.pipeline.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetIdentityProviderResponse {
            provider: row.map(|(issuer, audience, person_claim)| pb::IdentityProvider {
                issuer,
                audience,
                person_claim,
                jwks_uri: String::new(),
            }),
        }))
    }

    async fn put_person(
        &self,
        req: Request<pb::PutPersonRequest>,
    ) -> Result<Response<pb::PutPersonResponse>, Status> {
        let (c, t) = self.admin(&req).await?;
        let p = req.into_inner().person.unwrap_or_default();
        let mut v = Violations::new();
        let login = p.login.trim().to_lowercase();
        if login.is_empty() {
            v.add(
                "person.login",
                "is required: the value of the tenant's person claim",
            );
        } else if login.chars().any(char::is_whitespace) {
            v.add("person.login", "must not contain white space");
        }
        v.text("person.login", &login, 320);
        v.text("person.display_name", &p.display_name, 200);
        v.optional_id("person.rep_id", &p.rep_id, 128);
        let role = Role::from_person_proto(p.role());
        if role.is_none() {
            v.add(
                "person.role",
                "must be REP, MANAGER, COMP_ADMIN, FINANCE or AUDITOR",
            );
        }
        let () = v.finish(()).map_err(ApiError::InvalidArgument)?;
        let role = role.unwrap_or(Role::Rep);
        if !p.rep_id.is_empty() {
            let known: Option<bool> =
                sqlx::query_scalar("SELECT true FROM reps WHERE tenant_id = $1 AND rep_id = $2")
                    .bind(&c.tenant_id)
                    .bind(&p.rep_id)
                    .fetch_optional(&self.pipeline.pool)
                    .await
                    .map_err(ApiError::from)?;
            if known.is_none() {
                return Err(ApiError::invalid(
                    "person.rep_id",
                    format!(
                        "no rep {:?} in this tenant (send its RepUpserted first)",
                        p.rep_id
                    ),
                )
                .into());
            }
        }
        let mut tx = self.pipeline.pool.begin().await.map_err(ApiError::from)?;
        let before: Option<(String, String, bool, String)> = sqlx::query_as(
            "SELECT role, rep_id, active, display_name FROM auth_people WHERE tenant_id = $1 AND login = $2 FOR UPDATE",
        )
        .bind(&c.tenant_id)
        .bind(&login)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let person_json = |role: &str, rep: &str, active: bool, name: &str| serde_json::json!({"login": login, "role": role, "rep_id": rep, "active": active, "display_name": name});
        spm_server::audit::record(
            &mut tx,
            &c,
            spm_server::audit::Action::new("ingest", "person.put", format!("person:{login}"))
                .before(before.map(|b| person_json(&b.0, &b.1, b.2, &b.3)))
                .after(person_json(
                    role.as_str(),
                    &p.rep_id,
                    p.active,
                    &p.display_name,
                )),
        )
        .await
        .map_err(ApiError::from)?;
        sqlx::query(
            "INSERT INTO auth_people (tenant_id, login, role, rep_id, active, display_name, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, now())
             ON CONFLICT (tenant_id, login) DO UPDATE SET role = EXCLUDED.role, rep_id = EXCLUDED.rep_id,
               active = EXCLUDED.active, display_name = EXCLUDED.display_name, updated_at = EXCLUDED.updated_at",
        )
        .bind(&c.tenant_id)
        .bind(&login)
        .bind(role.as_str())
        .bind(&p.rep_id)
        .bind(p.active)
        .bind(&p.display_name)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::from)?;
        let env = admin_envelope(
            &c.tenant_id,
            &t.context,
            Payload::PersonUpserted(ev::PersonUpserted {
                login: login.clone(),
                role: role.to_person_proto() as i32,
                rep_id: p.rep_id.clone(),
                active: p.active,
                display_name: p.display_name.clone(),
            }),
        );
        self.emit_and_commit(
            tx,
            vec![(
                spm_core::kafka_key(&c.tenant_id, &format!("person:{login}")),
                env,
            )],
        )
        .await?;
        Ok(Response::new(pb::PutPersonResponse {
            person: Some(person_pb(login, role, p.rep_id, p.active, p.display_name)),
        }))
    }

    async fn get_sign_in(
        &self,
        req: Request<pb::GetSignInRequest>,
    ) -> Result<Response<pb::GetSignInResponse>, Status> {
        let tenant = req.into_inner().tenant_id;
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT i.issuer, i.audience, t.name FROM auth_idps i JOIN auth_tenants t USING (tenant_id)
              WHERE i.tenant_id = $1 AND i.issuer <> '' AND t.active",
        )
        .bind(&tenant)
        .fetch_optional(&self.pipeline.pool)
        .await
        .map_err(ApiError::from)?;
        // The same answer for an unknown tenant and one without a provider.
        let (issuer, audience, tenant_name) =
            row.ok_or_else(|| ApiError::NotFound(format!("no sign-in is set up for {tenant:?}")))?;
        Ok(Response::new(pb::GetSignInResponse {
            issuer,
            audience,
            tenant_name,
        }))
    }

    async fn list_people(
        &self,
        req: Request<pb::ListPeopleRequest>,
    ) -> Result<Response<pb::ListPeopleResponse>, Status> {
        let (c, _) = self.admin(&req).await?;
        let rows: Vec<(String, String, String, bool, String)> = sqlx::query_as(
            "SELECT login, role, rep_id, active, display_name FROM auth_people WHERE tenant_id = $1 ORDER BY login",
        )
        .bind(&c.tenant_id)
        .fetch_all(&self.pipeline.pool)
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListPeopleResponse {
            people: rows
                .into_iter()
                .filter_map(|(login, role, rep, active, name)| {
                    Some(person_pb(login, Role::parse(&role)?, rep, active, name))
                })
                .collect(),
        }))
    }
}

async fn insert_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant_id: &str,
    key: &auth::NewKey,
    role: Role,
    label: &str,
) -> Result<(), ApiError> {
    sqlx::query("INSERT INTO auth_keys (key_id, tenant_id, key_sha256, role, label) VALUES ($1, $2, $3, $4, $5)")
        .bind(&key.key_id)
        .bind(tenant_id)
        .bind(&key.sha256)
        .bind(role.as_str())
        .bind(label)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn key_event(
    tenant_id: &str,
    ctx: &TenantContext,
    key: &auth::NewKey,
    role: Role,
    label: &str,
) -> (String, ev::EventEnvelope) {
    (
        spm_core::kafka_key(tenant_id, &format!("key:{}", key.key_id)),
        admin_envelope(
            tenant_id,
            ctx,
            Payload::ApiKeyIssued(ev::ApiKeyIssued {
                key_id: key.key_id.clone(),
                key_sha256: key.sha256.clone(),
                role: role.to_proto() as i32,
                label: label.to_owned(),
            }),
        ),
    )
}

fn parked_state_name(s: pb::ParkedState) -> &'static str {
    match s {
        pb::ParkedState::Waiting | pb::ParkedState::Unspecified => "waiting",
        pb::ParkedState::Failed => "failed",
        pb::ParkedState::Released => "released",
        pb::ParkedState::Discarded => "discarded",
    }
}

fn parked_pb(r: crate::store::ParkedRow) -> pb::ParkedEvent {
    use prost::Message as _;
    let state = match r.state.as_str() {
        "waiting" => pb::ParkedState::Waiting,
        "failed" => pb::ParkedState::Failed,
        "released" => pb::ParkedState::Released,
        "discarded" => pb::ParkedState::Discarded,
        _ => pb::ParkedState::Unspecified,
    };
    pb::ParkedEvent {
        event_id: r.event_id.to_string(),
        kind: r.kind,
        occurred_at: Some(spm_proto::ext::timestamp(r.occurred_at)),
        parked_at: Some(spm_proto::ext::timestamp(r.parked_at)),
        state: state as i32,
        waiting_for: r.waits,
        error: r.error.unwrap_or_default(),
        resolved_at: r.resolved_at.map(spm_proto::ext::timestamp),
        discarded_by: r.discarded_by.unwrap_or_default(),
        discard_reason: r.discard_reason.unwrap_or_default(),
        event: pb::CrmEvent::decode(r.event.as_slice()).ok(),
    }
}
