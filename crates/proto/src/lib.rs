//! Generated protobuf types and gRPC stubs of SPM, compiled once from `/proto`.
//!
//! Everyone else imports this crate; nobody else runs codegen.

#![allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// Encoded `FileDescriptorSet` of every SPM proto, for gRPC reflection and JSON mapping.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/spm_descriptor.bin"));

/// The descriptor pool of every SPM proto (plus the well-known types they import).
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("embedded descriptor set decodes")
    });
    &POOL
}

pub mod codec;
pub mod json;

pub mod common {
    pub mod v1 {
        tonic::include_proto!("spm.common.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("spm.events.v1");
    }
}

pub mod ingest {
    pub mod v1 {
        tonic::include_proto!("spm.ingest.v1");
    }
}

pub use common::v1 as common_v1;
pub use events::v1 as events_v1;

pub mod ext;

pub mod scoring {
    pub mod v1 {
        tonic::include_proto!("spm.scoring.v1");
    }
}

pub mod incentive {
    pub mod v1 {
        tonic::include_proto!("spm.incentive.v1");
    }
}

pub mod notification {
    pub mod v1 {
        tonic::include_proto!("spm.notification.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("spm.audit.v1");
    }
}

pub mod connect {
    pub mod v1 {
        tonic::include_proto!("spm.connect.v1");
    }
}

/// Salesforce's Pub/Sub API (`proto/eventbus/v1`), for the connector and its test fake.
pub mod eventbus {
    pub mod v1 {
        tonic::include_proto!("eventbus.v1");
    }
}
