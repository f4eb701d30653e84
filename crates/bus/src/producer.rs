//! The idempotent producer.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::KafkaConfig;

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent, compressing producer. Sends of a batch are enqueued together and awaited
/// together, so librdkafka batches them.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    timeout: Duration,
}

impl Producer {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            inner: cfg.producer_config().create()?,
            timeout: cfg.delivery_timeout(),
        })
    }

    /// Sends every record and waits for all acknowledgements. The result for each record is
    /// in input order; an `Ok` means the broker acknowledged the write.
    pub async fn send_all(&self, records: &[Record]) -> Vec<Result<Delivered, KafkaError>> {
        let futures = records.iter().map(|r| {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let rec = FutureRecord::to(&r.topic)
                .key(r.key.as_bytes())
                .payload(&r.payload)
                .headers(headers);
            // Enqueue now (the future returned by send does the enqueue when first polled,
            // so poll them all together below).
            self.inner.send(rec, self.timeout)
        });
        join_all(futures)
            .await
            .into_iter()
            .map(|r| {
                r.map(|d| Delivered {
                    partition: d.partition,
                    offset: d.offset,
                })
                .map_err(|(e, _)| e)
            })
            .collect()
    }

    /// Sends one record (tools and tests; hot paths use [`Producer::send_all`]).
    pub async fn send(&self, record: &Record) -> Result<Delivered, KafkaError> {
        self.send_all(std::slice::from_ref(record))
            .await
            .pop()
            .expect("one result per record")
    }

    /// A fatal producer error (the idempotent producer cannot continue), if any.
    pub fn fatal_error(&self) -> Option<String> {
        self.inner.client().fatal_error().map(|(_, s)| s)
    }

    /// Waits for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.inner.flush(timeout);
    }
}
