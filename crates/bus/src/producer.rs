//! The idempotent producer.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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
///
/// After a fatal error (an idempotent producer whose timed-out batches made it bump its
/// epoch can be fenced by the broker, and never recovers) it replaces itself with a new
/// producer: records are then re-sent under a new producer id, which consumers deduplicate
/// by event id.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<RwLock<FutureProducer>>,
    config: Arc<ClientConfig>,
    timeout: Duration,
}

impl Producer {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let config = cfg.producer_config();
        Ok(Self {
            inner: Arc::new(RwLock::new(config.create()?)),
            config: Arc::new(config),
            timeout: cfg.delivery_timeout(),
        })
    }

    fn current(&self) -> FutureProducer {
        self.inner.read().expect("producer lock").clone()
    }

    /// Replaces the producer if it hit a fatal error.
    fn recover(&self, errors: &[&KafkaError]) {
        let fenced = errors.iter().any(|e| {
            matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::InvalidProducerEpoch
                        | RDKafkaErrorCode::OutOfOrderSequenceNumber
                        | RDKafkaErrorCode::UnknownProducerId
                        | RDKafkaErrorCode::InvalidProducerIdMapping
                        | RDKafkaErrorCode::Fatal
                )
            )
        });
        let current = self.current();
        if !fenced && current.client().fatal_error().is_none() {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(
                    fatal = ?current.client().fatal_error(),
                    "Kafka producer hit a fatal error; replaced it with a new one"
                );
                *self.inner.write().expect("producer lock") = fresh;
            }
            Err(e) => tracing::error!(error = %e, "could not recreate the Kafka producer"),
        }
    }

    /// Sends every record and waits for all acknowledgements. The result for each record is
    /// in input order; an `Ok` means the broker acknowledged the write.
    pub async fn send_all(&self, records: &[Record]) -> Vec<Result<Delivered, KafkaError>> {
        let producer = self.current();
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
            producer.send(rec, self.timeout)
        });
        let results: Vec<Result<Delivered, KafkaError>> = join_all(futures)
            .await
            .into_iter()
            .map(|r| {
                r.map(|d| Delivered {
                    partition: d.partition,
                    offset: d.offset,
                })
                .map_err(|(e, _)| e)
            })
            .collect();
        let errors: Vec<&KafkaError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if !errors.is_empty() {
            self.recover(&errors);
        }
        results
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
        self.current().client().fatal_error().map(|(_, s)| s)
    }

    /// Waits for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.current().flush(timeout);
    }
}
