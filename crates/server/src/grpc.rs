//! The gRPC server every service runs: health and reflection, and in front of every call
//! one edge layer that opens the server span (parent from the caller's `traceparent`),
//! authenticates the caller (a tenant key or a person's token), and records request metrics.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::{Layer, Service};
use tracing::{Instrument as _, field};

use crate::auth::KeyStore;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Builder of a service's gRPC server.
pub struct GrpcServer {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    edge: EdgeLayer,
}

impl GrpcServer {
    /// A server authenticating callers against `keys`.
    pub fn new(keys: KeyStore) -> Self {
        Self {
            routes: RoutesBuilder::default(),
            names: Vec::new(),
            edge: EdgeLayer {
                keys,
                open: Vec::new(),
                people: Vec::new(),
            },
        }
    }

    /// Adds a service (wrap generated servers with message size limits first).
    pub fn add_service<S>(&mut self, svc: S) -> &mut Self
    where
        S: Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(svc);
        self
    }

    /// Methods (full paths, `/pkg.Service/Method`) that do their own authentication.
    pub fn open_method(&mut self, path: &'static str) -> &mut Self {
        self.edge.open.push(path);
        self
    }

    /// Methods (full paths) that signed-in people may call; the method itself then scopes
    /// what they see ([`crate::access`]). People get `PERMISSION_DENIED` on every other
    /// method.
    pub fn people_may_call(&mut self, paths: &[&'static str]) -> &mut Self {
        self.edge.people.extend_from_slice(paths);
        self
    }

    /// Binds `addr` (port 0 picks a free port) and returns the bound address and the
    /// server future, which runs until `shutdown` resolves and in-flight calls finish.
    pub async fn bind(
        self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(SocketAddr, BoxFuture<Result<(), tonic::transport::Error>>), std::io::Error> {
        let (reporter, health) = tonic_health::server::health_reporter();
        set_all(&reporter, &self.names, ServingStatus::Serving).await;
        // Both reflection versions (many clients still ask v1alpha), each listing only what
        // this port serves: its services, health and reflection.
        let reflection = || {
            let b = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(spm_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
                .include_reflection_service(false);
            self.names
                .iter()
                .copied()
                .chain(INFRA_SERVICES)
                .fold(b, tonic_reflection::server::Builder::with_service_name)
        };
        let v1 = reflection().build_v1().expect("descriptor sets are valid");
        let v1alpha = reflection()
            .build_v1alpha()
            .expect("descriptor sets are valid");
        let mut routes = self.routes;
        routes
            .add_service(health)
            .add_service(v1)
            .add_service(v1alpha);
        let routes: Routes = routes.routes();

        let incoming = TcpIncoming::bind(addr)?.with_nodelay(Some(true));
        let bound = incoming.local_addr()?;
        let names = self.names;
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(self.edge)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                set_all(&reporter, &names, ServingStatus::NotServing).await;
            });
        Ok((bound, Box::pin(server)))
    }
}

/// What every port serves besides its own services.
const INFRA_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn set_all(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for n in names {
        reporter.set_service_status(*n, status).await;
    }
}

/// Tracing, authentication and metrics in front of every call.
#[derive(Clone)]
pub struct EdgeLayer {
    keys: KeyStore,
    open: Vec<&'static str>,
    people: Vec<&'static str>,
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    layer: EdgeLayer,
}

impl<S> Service<http::Request<Body>> for Edge<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone is fresh and maybe not ready; take the ready one and leave the clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();

        let path = req.uri().path().to_owned();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .map_or(("", ""), |(s, m)| (s, m));
        let (service, method) = (service.to_owned(), method.to_owned());
        let infra = service.starts_with("grpc.health.") || service.starts_with("grpc.reflection.");
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = field::Empty,
            tenant = field::Empty,
            principal = field::Empty,
            trace_id = field::Empty,
        );
        spm_telemetry::propagation::set_parent(
            &span,
            spm_telemetry::propagation::extract_http(req.headers()),
        );
        if let Some(t) = spm_telemetry::propagation::trace_id(&span) {
            span.record("trace_id", t);
        }

        let fut = async move {
            let started = Instant::now();
            let authenticate = !infra && !layer.open.contains(&path.as_str());
            let result = if authenticate {
                let header = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                match layer.keys.authenticate_header(header).await {
                    Ok(caller)
                        if caller.person.is_some() && !layer.people.contains(&path.as_str()) =>
                    {
                        Some(
                            tonic::Status::from(crate::ApiError::PermissionDenied(format!(
                                "{path} is for API keys; signed-in people cannot call it"
                            )))
                            .into_http::<Body>(),
                        )
                    }
                    Ok(caller) => {
                        tracing::Span::current().record("tenant", caller.tenant_id.as_str());
                        tracing::Span::current().record("principal", caller.key_id.as_str());
                        req.extensions_mut().insert(caller);
                        None
                    }
                    Err(e) => Some(tonic::Status::from(e).into_http::<Body>()),
                }
            } else {
                None
            };
            let res = match result {
                Some(rejected) => rejected,
                None => inner.call(req).await?,
            };
            // Trailers-only responses (errors) carry the code in the headers; a response
            // with a body reports its code in trailers, which we count as OK here.
            let code = res
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from);
            tracing::Span::current().record("rpc.grpc.status_code", code as i32);
            if !infra {
                let m = spm_telemetry::metrics::global();
                m.grpc_requests
                    .get_or_create(&spm_telemetry::metrics::labels([
                        ("method", &path),
                        ("code", &format!("{code:?}")),
                    ]))
                    .inc();
                m.grpc_request_seconds
                    .get_or_create(&spm_telemetry::metrics::labels([("method", &path)]))
                    .observe(started.elapsed().as_secs_f64());
            }
            Ok(res)
        };
        Box::pin(fut.instrument(span))
    }
}
