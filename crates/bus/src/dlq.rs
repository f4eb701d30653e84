//! The dead-letter queue: a record that cannot be processed is published to `spm.dlq.v1`
//! with its original topic, partition, offset, consumer group and the error in headers,
//! and the partition moves on. Nothing is dropped silently.

use rdkafka::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, OwnedMessage};

use crate::headers as h;
use crate::{KafkaConfig, Producer, Record};

/// Publishes poison records to the DLQ topic.
#[derive(Clone)]
pub struct Dlq {
    producer: Producer,
    topic: String,
    group: String,
}

impl Dlq {
    pub fn new(cfg: &KafkaConfig, producer: Producer, group: &str) -> Self {
        Self {
            producer,
            topic: cfg.topic(spm_core::topics::DLQ),
            group: group.to_owned(),
        }
    }

    /// Sends every `(message, error)` and waits until the broker has them all.
    pub async fn send_all(&self, poison: &[(OwnedMessage, String)]) -> Result<(), KafkaError> {
        let records: Vec<Record> = poison.iter().map(|(m, e)| self.record(m, e)).collect();
        for (res, (m, e)) in self
            .producer
            .send_all(&records)
            .await
            .into_iter()
            .zip(poison)
        {
            res?;
            spm_telemetry::metrics::global()
                .events_dead_lettered
                .get_or_create(&spm_telemetry::metrics::labels([("topic", m.topic())]))
                .inc();
            tracing::warn!(
                topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %e,
                "record sent to the dead-letter queue"
            );
        }
        Ok(())
    }

    fn record(&self, m: &OwnedMessage, error: &str) -> Record {
        let mut headers: Vec<(String, String)> = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .filter_map(|hd| {
                        Some((
                            hd.key.to_owned(),
                            String::from_utf8(hd.value?.to_vec()).ok()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        headers.push((h::DLQ_TOPIC.into(), m.topic().into()));
        headers.push((h::DLQ_PARTITION.into(), m.partition().to_string()));
        headers.push((h::DLQ_OFFSET.into(), m.offset().to_string()));
        headers.push((h::DLQ_GROUP.into(), self.group.clone()));
        // Header values are bounded: an error message is a diagnosis, not a dump.
        headers.push((h::DLQ_ERROR.into(), error.chars().take(2000).collect()));
        Record {
            topic: self.topic.clone(),
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        }
    }
}
