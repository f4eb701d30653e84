//! `IncentiveService` with `GetStatement` answered from encoded replies.
//!
//! Statements are the hot read (every rep's app polls its own) and hundreds of lines
//! long. The generated dispatcher would copy a cached statement's decoded lines and encode
//! them again on every call; this route hands the cached bytes (see [`crate::cache`]) to
//! the reply frame instead. Every other method goes to the generated dispatcher, and the
//! wire format is the same.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::Bytes;
use spm_proto::codec::Encoded;
use spm_proto::incentive::v1 as pb;
use spm_proto::incentive::v1::incentive_service_server::IncentiveServiceServer;
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};

use crate::api::Api;

/// The full path of the method this route serves itself.
pub const GET_STATEMENT: &str = "/spm.incentive.v1.IncentiveService/GetStatement";

#[derive(Clone)]
pub struct StatementRoute {
    api: Arc<Api>,
    inner: IncentiveServiceServer<Api>,
    max_message_bytes: usize,
}

impl StatementRoute {
    pub fn new(api: Api, max_message_bytes: usize) -> Self {
        let api = Arc::new(api);
        Self {
            inner: IncentiveServiceServer::from_arc(api.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            api,
            max_message_bytes,
        }
    }
}

impl NamedService for StatementRoute {
    const NAME: &'static str = <IncentiveServiceServer<Api> as NamedService>::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl tower::Service<http::Request<Body>> for StatementRoute {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<http::Request<Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != GET_STATEMENT {
            return tower::Service::call(&mut self.inner, req);
        }
        let method = Reply(self.api.clone());
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = Grpc::new(Encoded::<pb::GetStatementRequest>::default())
                .apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.unary(method, req).await)
        })
    }
}

struct Reply(Arc<Api>);

impl UnaryService<pb::GetStatementRequest> for Reply {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<pb::GetStatementRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.statement_reply(req).await.map(tonic::Response::new) })
    }
}
