//! People as principals, end to end with the stack's real OpenID provider: tokens from its
//! login page, forged ones signed with its key, a key rotation while services run; and what
//! each role sees of the tenant's data.

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use spm_proto::common::v1 as common;
use spm_proto::events::v1 as ev;
use spm_proto::incentive::v1 as pb;
use spm_proto::incentive::v1::incentive_admin_service_client::IncentiveAdminServiceClient;
use spm_proto::incentive::v1::incentive_service_client::IncentiveServiceClient;
use spm_proto::ingest::v1 as ipb;
use spm_proto::ingest::v1::ingest_admin_service_client::IngestAdminServiceClient;
use spm_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use spm_proto::notification::v1 as npb;
use spm_proto::notification::v1::notification_service_client::NotificationServiceClient;
use spm_proto::scoring::v1 as spb;
use spm_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use spm_testkit::events::{deal, rep, team};
use spm_testkit::oidc::{Idp, audience_for};
use spm_testkit::{Service, TestEnv, authed, create_tenant, eventually, wait_key_known};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use crate::incentive::plan;
use crate::scoring::{card, kpi, submit};

fn email(rep: &str) -> String {
    format!("{rep}@example.com")
}

/// Asserts that `call` fails with `code` (so nothing was returned) and gives the message.
async fn refused<T: std::fmt::Debug>(
    what: &str,
    code: Code,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> String {
    match call.await {
        Ok(r) => panic!("{what}: expected {code:?}, got data {:?}", r.into_inner()),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            s.message().to_owned()
        }
    }
}

async fn statement(
    inc: &mut IncentiveServiceClient<Channel>,
    cred: &str,
    rep: &str,
) -> Result<pb::Statement, Status> {
    inc.get_statement(authed(
        pb::GetStatementRequest {
            as_of: None,
            rep_id: rep.into(),
            period: None,
            with_explanations: false,
        },
        cred,
    ))
    .await
    .map(|r| r.into_inner().statement.unwrap_or_default())
}

pub(crate) async fn set_idp(
    ingest: &Service,
    key: &str,
    issuer: &str,
    audience: &str,
) -> Result<ipb::SetIdentityProviderResponse, Status> {
    IngestAdminServiceClient::new(ingest.channel().await)
        .set_identity_provider(authed(
            ipb::SetIdentityProviderRequest {
                provider: Some(ipb::IdentityProvider {
                    issuer: issuer.into(),
                    audience: audience.into(),
                    person_claim: String::new(),
                    jwks_uri: String::new(),
                }),
            },
            key,
        ))
        .await
        .map(tonic::Response::into_inner)
}

pub(crate) async fn put_person(
    ingest: &Service,
    key: &str,
    login: &str,
    role: ev::PersonRole,
    rep: &str,
    active: bool,
) {
    IngestAdminServiceClient::new(ingest.channel().await)
        .put_person(authed(
            ipb::PutPersonRequest {
                person: Some(ipb::Person {
                    login: login.into(),
                    role: role as i32,
                    rep_id: rep.into(),
                    active,
                    display_name: String::new(),
                }),
            },
            key,
        ))
        .await
        .expect("put person");
}

/// Waits until `svc` takes `token` (the provider and people reach it over Kafka).
async fn wait_token_works(inc: &IncentiveServiceClient<Channel>, token: &str, rep: &str) {
    eventually(
        Duration::from_secs(30),
        "the person's token to be accepted",
        || {
            let mut inc = inc.clone();
            let token = token.to_owned();
            let rep = rep.to_owned();
            async move { statement(&mut inc, &token, &rep).await.ok() }
        },
    )
    .await;
}

/// A resolution as a person sends it (`resolved_by` is ignored for people: their login is
/// recorded).
fn resolve_req(
    dispute_id: &str,
    outcome: ev::DisputeOutcome,
    adjustment: &str,
    note: &str,
) -> pb::ResolveDisputeRequest {
    pb::ResolveDisputeRequest {
        dispute_id: dispute_id.to_owned(),
        outcome: outcome as i32,
        adjustment: adjustment.into(),
        note: note.into(),
        resolved_by: "someone-else".into(),
    }
}

fn hs256(header: &serde_json::Value, claims: &serde_json::Value, secret: &[u8]) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use hmac::{Hmac, Mac};
    let input = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(header).unwrap()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

fn swap_payload(token: &str, claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(claims).unwrap()),
        parts[2]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_see_only_what_their_role_allows() {
    let idp = Idp::from_env();
    let env = TestEnv::new("people").await;
    let ingest = env.start("ingest").await;
    let incentive = env.start("incentive").await;
    let scoring = env.start("scoring").await;
    let notification = env.start("notification").await;
    let a = create_tenant(&env, &ingest, "acme").await;
    let b = create_tenant(&env, &ingest, "globex").await;
    for s in [&ingest, &incentive, &scoring, &notification] {
        wait_key_known(s, &a.admin_key).await;
    }
    wait_key_known(&incentive, &b.admin_key).await;
    let aud_a = audience_for("acme");
    let aud_b = audience_for("globex");

    // The provider: bad configurations are refused with the field and the reason, and change
    // nothing.
    let msg = |s: &Status| format!("{}: {:?}", s.message(), s.get_details_bad_request());
    let e = set_idp(&ingest, &a.admin_key, "http://login.example.com", &aud_a)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        msg(&e).contains("provider.issuer") && msg(&e).contains("https"),
        "{}",
        msg(&e)
    );
    let e = set_idp(&ingest, &a.admin_key, "http://127.0.0.1:9", &aud_a)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(msg(&e).contains("could not be fetched"), "{}", msg(&e));
    let localhost = idp.issuer.replace("127.0.0.1", "localhost");
    let e = set_idp(&ingest, &a.admin_key, &localhost, &aud_a)
        .await
        .unwrap_err();
    assert!(msg(&e).contains("names issuer"), "{}", msg(&e));
    let e = set_idp(&ingest, &a.admin_key, &idp.issuer, "")
        .await
        .unwrap_err();
    assert!(msg(&e).contains("provider.audience"), "{}", msg(&e));
    let none = IngestAdminServiceClient::new(ingest.channel().await)
        .get_identity_provider(authed(ipb::GetIdentityProviderRequest {}, &a.admin_key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        none.provider, None,
        "a refused configuration stored nothing"
    );
    let ok = set_idp(&ingest, &a.admin_key, &idp.issuer, &aud_a)
        .await
        .expect("set idp");
    assert_eq!(
        ok.provider.unwrap().jwks_uri,
        format!("{}/jwks", idp.issuer)
    );
    let e = set_idp(&ingest, &b.admin_key, &idp.issuer, &aud_a)
        .await
        .unwrap_err();
    assert!(msg(&e).contains("another tenant"), "{}", msg(&e));
    set_idp(&ingest, &b.admin_key, &idp.issuer, &aud_b)
        .await
        .expect("set idp b");

    // The org: dee manages team east (ana, bo, gone), eli team west (cy); dee and eli are in
    // mgmt. Explicit grants: eve comp admin, fin finance, aud auditor; cy is disabled.
    let org = vec![
        team("mgmt", "", ""),
        team("east", "mgmt", "dee"),
        team("west", "mgmt", "eli"),
        rep("dee", "mgmt", ""),
        rep("eli", "mgmt", ""),
        rep("ana", "east", "dee"),
        rep("bo", "east", "dee"),
        rep("gone", "east", "dee"),
        rep("cy", "west", "eli"),
    ];
    submit(&ingest, &a.admin_key, org).await;
    submit(
        &ingest,
        &b.admin_key,
        vec![rep("ana", "", ""), rep("zed", "", "")],
    )
    .await;
    for k in [&a.admin_key, &b.admin_key] {
        IncentiveAdminServiceClient::new(incentive.channel().await)
            .put_plan(authed(
                pb::PutPlanRequest {
                    plan: Some(plan()),
                    draft: false,
                },
                k,
            ))
            .await
            .expect("plan");
    }
    spm_proto::scoring::v1::scoring_admin_service_client::ScoringAdminServiceClient::new(
        scoring.channel().await,
    )
    .put_scorecard(authed(
        spb::PutScorecardRequest {
            scorecard: Some(card(vec![kpi(
                "rev",
                "revenue",
                "100",
                spb::kpi_target::Kind::Fixed("10000".into()),
                "2",
                ev::Pillar::Results,
            )])),
        },
        &a.admin_key,
    ))
    .await
    .expect("scorecard");
    // Revenue goals this month for a rep of each manager: calibration is per subtree.
    for r in ["ana", "cy"] {
        spm_proto::scoring::v1::scoring_admin_service_client::ScoringAdminServiceClient::new(
            scoring.channel().await,
        )
        .set_goal(authed(
            spb::SetGoalRequest {
                subject_kind: spb::SubjectKind::Rep as i32,
                subject_id: r.into(),
                metric: "revenue".into(),
                period: None,
                target: "20000".into(),
                effective_from: None,
            },
            &a.admin_key,
        ))
        .await
        .expect("goal");
    }
    submit(
        &ingest,
        &a.admin_key,
        vec![
            deal("d-ana", "5000.00", &[("ana", "100")]),
            deal("d-bo", "3000.00", &[("bo", "100")]),
            deal("d-cy", "7000.00", &[("cy", "100")]),
            deal("d-gone", "1000.00", &[("gone", "100")]),
            deal("d-dee", "2000.00", &[("dee", "100")]),
        ],
    )
    .await;
    submit(
        &ingest,
        &b.admin_key,
        vec![deal("g-ana", "9000.00", &[("ana", "100")])],
    )
    .await;
    for (who, role, rep, active) in [
        ("eve", ev::PersonRole::CompAdmin, "", true),
        ("fin", ev::PersonRole::Finance, "", true),
        ("aud", ev::PersonRole::Auditor, "", true),
        ("cy", ev::PersonRole::Rep, "cy", false),
    ] {
        put_person(&ingest, &a.admin_key, &email(who), role, rep, active).await;
    }

    let mut inc = IncentiveServiceClient::new(incentive.channel().await);
    let mut adm = IncentiveAdminServiceClient::new(incentive.channel().await);
    let mut sc = ScoringServiceClient::new(scoring.channel().await);
    let mut nc = NotificationServiceClient::new(notification.channel().await);
    for r in ["ana", "bo", "cy", "gone", "dee"] {
        eventually(
            Duration::from_secs(30),
            "every deal on its statement",
            || {
                let (mut inc, key) = (inc.clone(), a.admin_key.clone());
                async move {
                    statement(&mut inc, &key, r)
                        .await
                        .ok()
                        .filter(|s| !s.lines.is_empty())
                }
            },
        )
        .await;
    }

    // Real sign-ins through the provider's login page.
    let tok = |who: &'static str| {
        let idp = idp.clone();
        let aud = aud_a.clone();
        async move { idp.token(&email(who), &aud).await }
    };
    let ana = tok("ana").await;
    let dee = tok("dee").await;
    let eve = tok("eve").await;
    let fin = tok("fin").await;
    let audi = tok("aud").await;
    let nobody = tok("nobody").await;
    let cy = tok("cy").await;
    let bo = tok("bo").await;
    wait_token_works(&inc, &ana, "ana").await;
    let wrong_password = idp.login(&email("ana"), "guess", &aud_a).await;
    assert!(
        wrong_password.is_err(),
        "the provider refuses a wrong password"
    );

    // Goal calibration: a manager's covers his subtree's goals, a comp admin's the
    // tenant's; a rep may not ask.
    let calibrate = |token: String| {
        let mut sc = sc.clone();
        async move {
            sc.get_goal_calibration(authed(
                spb::GetGoalCalibrationRequest {
                    metric: "revenue".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .map(|r| r.into_inner().goals)
        }
    };
    // (Projections need 10% of the period gone; the count of goals weighed does not.)
    assert_eq!(
        calibrate(dee.clone()).await.unwrap(),
        1,
        "dee: ana's goal only"
    );
    assert_eq!(
        calibrate(eve.clone()).await.unwrap(),
        2,
        "eve: ana's and cy's"
    );
    assert_eq!(
        calibrate(ana.clone()).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );

    // What each one sees.
    let own = statement(&mut inc, &ana, "ana")
        .await
        .expect("ana reads her statement");
    assert_eq!((own.rep_id.as_str(), own.lines.len()), ("ana", 1));
    let via_key = statement(&mut inc, &a.admin_key, "ana").await.unwrap();
    assert_eq!(
        own.total, via_key.total,
        "the same statement as the admin key sees"
    );
    assert_eq!(
        statement(&mut inc, &dee, "ana")
            .await
            .expect("dee reads his report")
            .total,
        own.total
    );
    statement(&mut inc, &dee, "dee")
        .await
        .expect("dee reads his own");
    statement(&mut inc, &eve, "cy")
        .await
        .expect("the comp admin reads anyone");
    statement(&mut inc, &fin, "cy")
        .await
        .expect("finance reads anyone");
    statement(&mut inc, &audi, "bo")
        .await
        .expect("the auditor reads anyone");
    statement(&mut inc, &dee, "gone")
        .await
        .expect("gone still reports to dee");
    // Who each one is, as the services see them.
    let who = |t: &String| {
        let (mut inc, t) = (inc.clone(), t.clone());
        async move {
            inc.who_am_i(authed(pb::WhoAmIRequest {}, &t))
                .await
                .expect("who am I")
                .into_inner()
        }
    };
    let me = who(&ana).await;
    assert_eq!(
        (
            me.tenant_id.as_str(),
            me.role.as_str(),
            me.login.as_str(),
            me.rep_id.as_str()
        ),
        ("acme", "rep", "ana@example.com", "ana")
    );
    let boss = who(&dee).await;
    assert_eq!(
        (boss.role.as_str(), boss.managed_teams.clone()),
        ("manager", vec!["east".to_owned()])
    );
    let admin = who(&eve).await;
    assert_eq!(
        (admin.role.as_str(), admin.rep_id.as_str()),
        ("comp_admin", "")
    );
    // Where a tenant's people sign in, asked without credentials.
    let mut open = IngestAdminServiceClient::new(ingest.channel().await);
    let sign_in = open
        .get_sign_in(tonic::Request::new(ipb::GetSignInRequest {
            tenant_id: "acme".into(),
        }))
        .await
        .expect("sign-in of acme")
        .into_inner();
    assert_eq!(
        (sign_in.issuer.as_str(), sign_in.audience.as_str()),
        (idp.issuer.as_str(), aud_a.as_str())
    );
    let e = open
        .get_sign_in(tonic::Request::new(ipb::GetSignInRequest {
            tenant_id: "nope".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let b_ana = statement(&mut inc, &b.admin_key, "ana").await.unwrap();
    assert_ne!(
        b_ana.total, own.total,
        "tenant B's ana is another person's pay"
    );

    let bo_line = statement(&mut inc, &a.admin_key, "bo").await.unwrap().lines[0]
        .line_id
        .clone();
    let ana_line = own.lines[0].line_id.clone();
    let dee_line = statement(&mut inc, &a.admin_key, "dee")
        .await
        .unwrap()
        .lines[0]
        .line_id
        .clone();

    // Disputes: ana on her own line (opened_by is her login, whatever she claims).
    let d_ana = inc
        .open_dispute(authed(
            pb::OpenDisputeRequest {
                line_id: ana_line.clone(),
                reason: "the split was 100%".into(),
                opened_by: "someone-else".into(),
            },
            &ana,
        ))
        .await
        .expect("ana disputes her own line")
        .into_inner()
        .dispute
        .unwrap();
    assert_eq!(d_ana.opened_by, email("ana"));
    let d_bo = inc
        .open_dispute(authed(
            pb::OpenDisputeRequest {
                line_id: bo_line.clone(),
                reason: "missing credit".into(),
                opened_by: "bo".into(),
            },
            &a.admin_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .dispute
        .unwrap();
    let d_dee = inc
        .open_dispute(authed(
            pb::OpenDisputeRequest {
                line_id: dee_line.clone(),
                reason: "my own".into(),
                opened_by: String::new(),
            },
            &dee,
        ))
        .await
        .expect("dee disputes his own line")
        .into_inner()
        .dispute
        .unwrap();
    let mine = inc
        .list_disputes(authed(
            pb::ListDisputesRequest {
                rep_id: String::new(),
                open_only: false,
            },
            &ana,
        ))
        .await
        .unwrap()
        .into_inner()
        .disputes;
    assert_eq!(
        mine.iter()
            .map(|d| d.dispute_id.as_str())
            .collect::<Vec<_>>(),
        [d_ana.dispute_id.as_str()],
        "a rep's dispute list is cut to her own"
    );
    let team_disputes = inc
        .list_disputes(authed(
            pb::ListDisputesRequest {
                rep_id: String::new(),
                open_only: false,
            },
            &dee,
        ))
        .await
        .unwrap()
        .into_inner()
        .disputes;
    assert_eq!(
        team_disputes.len(),
        3,
        "dee's subtree and his own: {team_disputes:?}"
    );

    // The table of refusals. Each asserts the status, so nothing was returned.
    let now = chrono::Utc::now().timestamp();
    let mut claims = idp.claims(&email("ana"), &aud_a);
    claims["exp"] = json!(now - 120);
    let expired = idp.forge(&idp.header(), &claims);
    let mut claims = idp.claims(&email("ana"), &aud_a);
    claims["nbf"] = json!(now + 600);
    let not_yet = idp.forge(&idp.header(), &claims);
    let wrong_aud = idp.forge(
        &idp.header(),
        &idp.claims(&email("ana"), "urn:spm:someone-else"),
    );
    let mut claims = idp.claims(&email("ana"), &aud_a);
    claims["iss"] = json!("http://127.0.0.1:9");
    let wrong_iss = idp.forge(&idp.header(), &claims);
    let none = {
        use base64::Engine as _;
        let b = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
        };
        format!(
            "{}.{}.",
            b(json!({"alg": "none", "typ": "JWT"})),
            b(idp.claims(&email("dee"), &aud_a))
        )
    };
    let hs_header = json!({"alg": "HS256", "kid": idp.current_kid()});
    let hs_jwk = hs256(
        &hs_header,
        &idp.claims(&email("dee"), &aud_a),
        idp.public_jwk().to_string().as_bytes(),
    );
    let hs_n = hs256(
        &hs_header,
        &idp.claims(&email("dee"), &aud_a),
        idp.public_jwk()["n"].as_str().unwrap().as_bytes(),
    );
    let unknown_kid = idp.forge(
        &json!({"alg": "RS256", "kid": "not-a-published-key"}),
        &idp.claims(&email("ana"), &aud_a),
    );
    let tampered = swap_payload(&ana, &idp.claims(&email("eve"), &aud_a));
    let no_email = {
        let mut c = idp.claims(&email("ana"), &aud_a);
        c.as_object_mut().unwrap().remove("email");
        idp.forge(&idp.header(), &c)
    };
    let unverified = {
        let mut c = idp.claims(&email("ana"), &aud_a);
        c["email_verified"] = json!(false);
        idp.forge(&idp.header(), &c)
    };
    // A real token is accepted: the forgeries fail for what they are, not for being forged.
    let forged_ok = idp.forge(&idp.header(), &idp.claims(&email("ana"), &aud_a));
    statement(&mut inc, &forged_ok, "ana")
        .await
        .expect("a well-formed token signed with the provider's key");

    let unauth: Vec<(&str, &String)> = vec![
        ("expired", &expired),
        ("not yet valid", &not_yet),
        ("wrong audience", &wrong_aud),
        ("wrong issuer", &wrong_iss),
        ("alg none", &none),
        ("HS256 keyed with the public JWK", &hs_jwk),
        ("HS256 keyed with the modulus", &hs_n),
        ("unknown kid", &unknown_kid),
        ("tampered payload", &tampered),
        ("no person claim", &no_email),
        ("unverified e-mail", &unverified),
    ];
    let garbage = "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln".to_owned();
    let mut cases = 0;
    for (what, t) in unauth.iter().copied().chain([("garbage", &garbage)]) {
        let m = refused(
            what,
            Code::Unauthenticated,
            statement_call(&mut inc, t, "ana"),
        )
        .await;
        assert!(
            !m.contains(t.as_str()),
            "{what}: the message does not echo the token"
        );
        cases += 1;
    }
    let m = refused(
        "expired, on scoring",
        Code::Unauthenticated,
        sc.get_score(authed(
            spb::GetScoreRequest {
                rep_id: "ana".into(),
                period: None,
            },
            &expired,
        )),
    )
    .await;
    assert!(m.contains("expired"), "{m}");
    cases += 1;

    let denied = Code::PermissionDenied;
    refused(
        "rep reads a peer's statement",
        denied,
        statement_call(&mut inc, &ana, "bo"),
    )
    .await;
    refused(
        "rep reads a peer's score",
        denied,
        sc.get_score(authed(
            spb::GetScoreRequest {
                rep_id: "bo".into(),
                period: None,
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep explains a peer's score",
        denied,
        sc.explain_score(authed(
            spb::ExplainScoreRequest {
                rep_id: "bo".into(),
                period: None,
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep reads a peer's metrics",
        denied,
        sc.get_metrics(authed(
            spb::GetMetricsRequest {
                subject_kind: spb::SubjectKind::Rep as i32,
                subject_id: "bo".into(),
                period: None,
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep reads a team's rollup",
        denied,
        sc.get_team_rollup(authed(
            spb::GetTeamRollupRequest {
                team_id: "east".into(),
                period: None,
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep watches a peer's scores",
        denied,
        sc.watch_scores(authed(
            spb::WatchScoresRequest {
                rep_id: "bo".into(),
                team_id: String::new(),
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep subscribes to a peer's notifications",
        denied,
        nc.subscribe(authed(
            npb::SubscribeRequest {
                recipient: "bo".into(),
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep reads a peer's notifications",
        denied,
        nc.list_notifications(authed(
            npb::ListNotificationsRequest {
                recipient: "bo".into(),
                unread_only: false,
                limit: 0,
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep changes a peer's preferences",
        denied,
        nc.set_preference(authed(
            npb::SetPreferenceRequest {
                user_id: "bo".into(),
                preference: Some(npb::Preference {
                    rule: "deal_won".into(),
                    channel: "email".into(),
                    enabled: false,
                }),
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep runs what-if for a peer",
        denied,
        inc.what_if(authed(
            pb::WhatIfRequest {
                rep_id: "bo".into(),
                amount: Some(common::Money {
                    amount: "100".into(),
                    currency: "EUR".into(),
                }),
                lines: vec![],
                close_at: None,
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep reads a peer's awards",
        denied,
        inc.list_awards(authed(
            pb::ListAwardsRequest {
                rep_id: "bo".into(),
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep explains a peer's line",
        Code::NotFound,
        inc.explain_line(authed(
            pb::ExplainLineRequest {
                as_of: None,
                line_id: bo_line.clone(),
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep disputes a peer's line",
        Code::NotFound,
        inc.open_dispute(authed(
            pb::OpenDisputeRequest {
                line_id: bo_line.clone(),
                reason: "mine!".into(),
                opened_by: String::new(),
            },
            &ana,
        )),
    )
    .await;
    refused(
        "rep resolves a peer's dispute",
        Code::NotFound,
        adm.resolve_dispute(authed(
            resolve_req(&d_bo.dispute_id, ev::DisputeOutcome::Rejected, "", "no"),
            &ana,
        )),
    )
    .await;
    refused(
        "rep resolves her own dispute",
        denied,
        adm.resolve_dispute(authed(
            resolve_req(&d_ana.dispute_id, ev::DisputeOutcome::Rejected, "", "no"),
            &ana,
        )),
    )
    .await;
    refused(
        "manager resolves his own dispute",
        denied,
        adm.resolve_dispute(authed(
            resolve_req(
                &d_dee.dispute_id,
                ev::DisputeOutcome::Accepted,
                "500",
                "fine",
            ),
            &dee,
        )),
    )
    .await;
    refused(
        "rep changes a plan",
        denied,
        adm.put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(plan()),
                draft: false,
            },
            &ana,
        )),
    )
    .await;
    refused(
        "finance changes a plan",
        denied,
        adm.put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(plan()),
                draft: false,
            },
            &fin,
        )),
    )
    .await;
    refused(
        "auditor resolves a dispute",
        denied,
        adm.resolve_dispute(authed(
            resolve_req(&d_bo.dispute_id, ev::DisputeOutcome::Rejected, "", "no"),
            &audi,
        )),
    )
    .await;
    refused(
        "manager reads outside his subtree",
        denied,
        statement_call(&mut inc, &dee, "cy"),
    )
    .await;
    refused(
        "manager reads another manager's team",
        denied,
        sc.get_team_rollup(authed(
            spb::GetTeamRollupRequest {
                team_id: "west".into(),
                period: None,
            },
            &dee,
        )),
    )
    .await;
    refused(
        "person with no mapped rep",
        denied,
        statement_call(&mut inc, &nobody, "ana"),
    )
    .await;
    refused(
        "disabled person",
        denied,
        statement_call(&mut inc, &cy, "cy"),
    )
    .await;
    refused(
        "token of tenant A on tenant B's rep",
        denied,
        statement_call(&mut inc, &ana, "zed"),
    )
    .await;
    refused(
        "a person sends CRM events",
        denied,
        IngestServiceClient::new(ingest.channel().await).submit_events(authed(
            ipb::SubmitEventsRequest {
                events: vec![deal("x", "1.00", &[("ana", "100")])],
            },
            &ana,
        )),
    )
    .await;
    refused(
        "a person issues API keys",
        denied,
        IngestAdminServiceClient::new(ingest.channel().await).issue_api_key(authed(
            ipb::IssueApiKeyRequest {
                role: ev::ApiKeyRole::Admin as i32,
                label: "mine".into(),
            },
            &eve,
        )),
    )
    .await;
    cases += 27;
    assert!(cases >= 20, "{cases} cases");

    // Nothing changed: the disputes are still the three opened, all open; the plan is v1.
    let all = inc
        .list_disputes(authed(
            pb::ListDisputesRequest {
                rep_id: String::new(),
                open_only: true,
            },
            &a.admin_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .disputes;
    assert_eq!(all.len(), 3, "{all:?}");
    let plans = adm
        .list_plans(authed(pb::ListPlansRequest { history: true }, &a.admin_key))
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert_eq!(plans.len(), 1, "no plan version was added: {plans:?}");

    // Who may resolve: dee bo's (his report), the comp admin his.
    adm.resolve_dispute(authed(
        resolve_req(
            &d_bo.dispute_id,
            ev::DisputeOutcome::Rejected,
            "",
            "checked the CRM",
        ),
        &dee,
    ))
    .await
    .expect("the manager resolves his report's dispute");
    let r = adm
        .resolve_dispute(authed(
            resolve_req(
                &d_dee.dispute_id,
                ev::DisputeOutcome::Rejected,
                "",
                "as agreed",
            ),
            &eve,
        ))
        .await
        .expect("the comp admin resolves the manager's dispute")
        .into_inner();
    assert_eq!(r.dispute.unwrap().resolved_by, email("eve"));

    // The leaderboard: ranks and names of peers, never their values; one's own in full.
    let lb = sc
        .get_leaderboard(authed(
            spb::GetLeaderboardRequest {
                team_id: String::new(),
                period: None,
                by: "revenue".into(),
                top_n: 10,
            },
            &ana,
        ))
        .await
        .expect("a rep reads the leaderboard")
        .into_inner();
    assert!(lb.entries.len() >= 5, "{lb:?}");
    for e in &lb.entries {
        if e.rep_id == "ana" {
            assert!(!e.value.is_empty(), "her own value: {e:?}");
        } else {
            assert!(
                e.value.is_empty() && !e.display_name.is_empty() && e.rank > 0,
                "a peer's row: {e:?}"
            );
        }
    }
    let full = sc
        .get_leaderboard(authed(
            spb::GetLeaderboardRequest {
                team_id: String::new(),
                period: None,
                by: "revenue".into(),
                top_n: 10,
            },
            &dee,
        ))
        .await
        .unwrap()
        .into_inner();
    let value_of = |lb: &spb::GetLeaderboardResponse, r: &str| {
        lb.entries
            .iter()
            .find(|e| e.rep_id == r)
            .map(|e| e.value.clone())
    };
    assert!(
        !value_of(&full, "bo").unwrap_or_default().is_empty(),
        "dee sees his report's value"
    );
    assert_eq!(
        value_of(&full, "cy"),
        Some(String::new()),
        "but not eli's report's"
    );

    // Live streams are cut to the scope: ana's stream carries her score changes only.
    let mut live = sc
        .watch_scores(authed(
            spb::WatchScoresRequest {
                rep_id: String::new(),
                team_id: String::new(),
            },
            &ana,
        ))
        .await
        .expect("ana watches her scores")
        .into_inner();
    submit(
        &ingest,
        &a.admin_key,
        vec![
            deal("d-bo-2", "100.00", &[("bo", "100")]),
            deal("d-ana-2", "100.00", &[("ana", "100")]),
        ],
    )
    .await;
    let first = tokio::time::timeout(Duration::from_secs(30), live.message())
        .await
        .expect("a score change within 30 s")
        .expect("stream")
        .expect("an item");
    assert_eq!(
        first.score.unwrap().rep_id,
        "ana",
        "bo's change was not on ana's stream"
    );

    // A move: gone leaves dee for eli's team; dee loses him, eli gains him.
    submit(&ingest, &a.admin_key, vec![rep("gone", "west", "eli")]).await;
    let eli = tok("eli").await;
    eventually(
        Duration::from_secs(30),
        "gone's move to reach incentive",
        || {
            let (mut inc, eli) = (inc.clone(), eli.clone());
            async move { statement(&mut inc, &eli, "gone").await.ok() }
        },
    )
    .await;
    refused(
        "manager after the rep moved away",
        denied,
        statement_call(&mut inc, &dee, "gone"),
    )
    .await;
    // A move dated ahead takes effect on its date, not before.
    let later = chrono::Utc::now() + chrono::Duration::seconds(240);
    let mut ev_later = rep("bo", "west", "eli");
    ev_later.occurred_at = Some(spm_proto::ext::timestamp(later));
    submit(&ingest, &a.admin_key, vec![ev_later]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    statement(&mut inc, &dee, "bo")
        .await
        .expect("bo reports to dee until his move's date");
    refused(
        "the new manager before the move's date",
        denied,
        statement_call(&mut inc, &eli, "bo"),
    )
    .await;

    // Disabling a person takes effect within the auth cache's 5 s.
    put_person(
        &ingest,
        &a.admin_key,
        &email("bo"),
        ev::PersonRole::Rep,
        "bo",
        false,
    )
    .await;
    statement(&mut inc, &bo, "bo").await.ok();
    eventually(Duration::from_secs(30), "bo disabled", || {
        let (mut inc, bo) = (inc.clone(), bo.clone());
        async move {
            (statement(&mut inc, &bo, "bo").await.err()?.code() == Code::PermissionDenied)
                .then_some(())
        }
    })
    .await;
}

fn statement_call<'a>(
    inc: &'a mut IncentiveServiceClient<Channel>,
    cred: &'a str,
    rep: &'a str,
) -> impl Future<Output = Result<tonic::Response<pb::GetStatementResponse>, Status>> + 'a {
    inc.get_statement(authed(
        pb::GetStatementRequest {
            as_of: None,
            rep_id: rep.into(),
            period: None,
            with_explanations: false,
        },
        cred,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_at_the_provider_needs_no_restart() {
    let idp = Idp::from_env();
    let env = TestEnv::new("people-rotation").await;
    let ingest = env.start("ingest").await;
    let incentive = env.start("incentive").await;
    let t = create_tenant(&env, &ingest, "rot").await;
    wait_key_known(&incentive, &t.admin_key).await;
    let aud = audience_for("rot");
    set_idp(&ingest, &t.admin_key, &idp.issuer, &aud)
        .await
        .expect("idp");
    submit(&ingest, &t.admin_key, vec![rep("ana", "", "")]).await;
    let inc = IncentiveServiceClient::new(incentive.channel().await);
    let before = idp.token(&email("ana"), &aud).await;
    wait_token_works(&inc, &before, "ana").await;
    let old_kid = idp.current_kid();

    let new_kid = idp.rotate().await;
    assert_ne!(new_kid, old_kid);
    let after = idp.token(&email("ana"), &aud).await;
    let kid_of = |t: &str| {
        use base64::Engine as _;
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&h).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        kid_of(&after),
        new_kid,
        "the provider signs with the new key"
    );
    let mut inc2 = inc.clone();
    statement(&mut inc2, &after, "ana")
        .await
        .expect("a token of the new key, same service process");
    statement(&mut inc2, &before, "ana")
        .await
        .expect("the old key is still published");
    assert!(incentive.pid() > 0);
}

/// `spm login` signs a person in through the provider's page (the test plays the browser),
/// and the CLI's later calls are that person's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spm_login_makes_the_cli_a_person() {
    use tokio::io::AsyncBufReadExt as _;
    let idp = Idp::from_env();
    let env = TestEnv::new("people-login").await;
    let ingest = env.start("ingest").await;
    let incentive = env.start("incentive").await;
    let t = create_tenant(&env, &ingest, "clitenant").await;
    wait_key_known(&incentive, &t.admin_key).await;
    let aud = audience_for("clitenant");
    set_idp(&ingest, &t.admin_key, &idp.issuer, &aud)
        .await
        .expect("idp");
    submit(
        &ingest,
        &t.admin_key,
        vec![rep("ana", "", ""), rep("bo", "", "")],
    )
    .await;
    IncentiveAdminServiceClient::new(incentive.channel().await)
        .put_plan(authed(
            pb::PutPlanRequest {
                plan: Some(plan()),
                draft: false,
            },
            &t.admin_key,
        ))
        .await
        .expect("plan");
    submit(
        &ingest,
        &t.admin_key,
        vec![deal("d1", "4000.00", &[("ana", "100")])],
    )
    .await;
    let inc = IncentiveServiceClient::new(incentive.channel().await);
    wait_token_works(&inc, &idp.token(&email("ana"), &aud).await, "ana").await;

    let token_file = env.log_dir.join("token.json");
    let spm = spm_testkit::process::binary("spm");
    let cli = |args: &[&str]| {
        let mut c = tokio::process::Command::new(&spm);
        c.args(args)
            .env_remove("SPM_API_KEY")
            .env("SPM_TOKEN_FILE", &token_file)
            .env("SPM_INCENTIVE_URL", format!("http://{}", incentive.grpc))
            .env("SPM_OIDC_ISSUER", &idp.issuer)
            .env("SPM_OIDC_AUDIENCE", &aud)
            .kill_on_drop(true);
        c
    };
    let mut login = cli(&["login", "--no-browser", "--timeout", "60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spm login");
    let mut lines = tokio::io::BufReader::new(login.stdout.take().unwrap()).lines();
    let url = loop {
        let l = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("spm login prints the address")
            .unwrap()
            .expect("a line");
        if let Some(u) = l.trim().strip_prefix("http") {
            break format!("http{u}");
        }
    };
    assert!(
        url.contains("code_challenge=") && url.contains("resource="),
        "{url}"
    );
    let callback = idp
        .browse(&url, &email("ana"), spm_testkit::oidc::PASSWORD)
        .await
        .expect("sign in");
    assert!(
        callback.starts_with("http://127.0.0.1:") && callback.contains("/callback?code="),
        "{callback}"
    );
    let page = spm_testkit::http()
        .get(&callback)
        .send()
        .await
        .expect("the CLI's callback");
    assert!(page.text().await.unwrap().contains("Signed in"));
    let done = tokio::time::timeout(Duration::from_secs(20), login.wait())
        .await
        .expect("spm login ends")
        .unwrap();
    assert!(done.success());
    let mut rest = String::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push_str(&l);
    }
    assert!(rest.contains("Signed in as ana@example.com"), "{rest}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is private");

    let own = cli(&["statement", "ana"]).output().await.unwrap();
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    assert!(
        String::from_utf8_lossy(&own.stdout).contains("commission:d1"),
        "{}",
        String::from_utf8_lossy(&own.stdout)
    );
    let peer = cli(&["statement", "bo"]).output().await.unwrap();
    assert!(!peer.status.success());
    let err = String::from_utf8_lossy(&peer.stderr);
    assert!(err.contains("own data"), "{err}");

    let out = cli(&["logout"]).output().await.unwrap();
    assert!(out.status.success() && !token_file.exists());
}
