//! The idempotent producer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message as _};
use tokio::sync::Notify;

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

/// The acknowledgements of one [`Producer::send_all`]: librdkafka's delivery callback
/// (on the producer's polling thread) fills a slot per record and wakes the caller once
/// the last one is in. One wake per batch, not a future and a channel per record.
struct Batch {
    results: Mutex<Vec<Option<Result<Delivered, KafkaError>>>>,
    pending: AtomicUsize,
    done: Notify,
}

impl Batch {
    fn settle(&self, idx: usize, result: Result<Delivered, KafkaError>) {
        self.results.lock().expect("batch results")[idx] = Some(result);
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

/// Which record of which batch a delivery report is for.
struct Slot {
    batch: Arc<Batch>,
    idx: usize,
}

/// Routes delivery reports to their batch.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Self::DeliveryOpaque) {
        let r = match result {
            Ok(m) => Ok(Delivered {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(e.clone()),
        };
        slot.batch.settle(slot.idx, r);
    }
}

type Inner = ThreadedProducer<Deliveries>;

/// An idempotent, compressing producer. Sends of a batch are enqueued together and awaited
/// together, so librdkafka batches them.
///
/// After a fatal error (an idempotent producer whose timed-out batches made it bump its
/// epoch can be fenced by the broker, and never recovers) it replaces itself with a new
/// producer: records are then re-sent under a new producer id, which consumers deduplicate
/// by event id.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<RwLock<Arc<Inner>>>,
    config: Arc<ClientConfig>,
    timeout: Duration,
}

impl Producer {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let config = cfg.producer_config();
        Ok(Self {
            inner: Arc::new(RwLock::new(Arc::new(
                config.create_with_context(Deliveries)?,
            ))),
            config: Arc::new(config),
            timeout: cfg.delivery_timeout(),
        })
    }

    fn current(&self) -> Arc<Inner> {
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
        match self.config.create_with_context::<_, Inner>(Deliveries) {
            Ok(fresh) => {
                tracing::warn!(
                    fatal = ?current.client().fatal_error(),
                    "Kafka producer hit a fatal error; replaced it with a new one"
                );
                *self.inner.write().expect("producer lock") = Arc::new(fresh);
            }
            Err(e) => tracing::error!(error = %e, "could not recreate the Kafka producer"),
        }
    }

    /// Sends every record and waits for all acknowledgements. The result for each record is
    /// in input order; an `Ok` means the broker acknowledged the write.
    pub async fn send_all(&self, records: &[Record]) -> Vec<Result<Delivered, KafkaError>> {
        if records.is_empty() {
            return Vec::new();
        }
        let producer = self.current();
        let batch = Arc::new(Batch {
            results: Mutex::new(vec![None; records.len()]),
            pending: AtomicUsize::new(records.len()),
            done: Notify::new(),
        });
        for (idx, r) in records.iter().enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut rec = BaseRecord::with_opaque_to(
                &r.topic,
                Box::new(Slot {
                    batch: batch.clone(),
                    idx,
                }),
            )
            .key(r.key.as_bytes())
            .payload(&r.payload)
            .headers(headers);
            // A full local queue drains as the broker acknowledges: wait and retry, up to
            // the delivery timeout.
            let started = Instant::now();
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if started.elapsed() < self.timeout =>
                    {
                        rec = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, back)) => {
                        drop(back);
                        batch.settle(idx, Err(e));
                        break;
                    }
                }
            }
        }
        // Every enqueued record gets exactly one delivery report (at the latest when its
        // delivery timeout expires); a notification sent before this wait is kept.
        if batch.pending.load(Ordering::Acquire) > 0 {
            batch.done.notified().await;
        }
        let results: Vec<Result<Delivered, KafkaError>> =
            std::mem::take(&mut *batch.results.lock().expect("batch results"))
                .into_iter()
                .map(|r| r.unwrap_or(Err(KafkaError::Canceled)))
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
