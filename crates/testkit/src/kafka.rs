//! Reading topics back in tests.

use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers as _;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use spm_proto::events::v1::EventEnvelope;

use crate::TestEnv;

/// A record as read back.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub envelope: Option<EventEnvelope>,
    pub payload: Vec<u8>,
}

impl Read {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Every record of base topic `topic` in this environment, from the beginning to the end
/// offsets at the time of the call.
pub fn read_topic(env: &TestEnv, topic: &str) -> Vec<Read> {
    let k = env.kafka();
    let full = k.topic(topic);
    let consumer: BaseConsumer = k
        .consumer_config(&format!("{}reader-{}", env.prefix, uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    let md = consumer
        .fetch_metadata(Some(&full), Duration::from_secs(10))
        .expect("topic metadata");
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(&full, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            if high > 0 {
                ends.insert(p.id(), high);
                tpl.add_partition_offset(&full, p.id(), Offset::Beginning).expect("tpl");
            }
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.expect("read record");
        let payload = m.payload().unwrap_or_default().to_vec();
        out.push(Read {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .filter_map(|x| Some((x.key.to_owned(), String::from_utf8(x.value?.to_vec()).ok()?)))
                        .collect()
                })
                .unwrap_or_default(),
            envelope: EventEnvelope::decode(payload.as_slice()).ok(),
            payload,
        });
        if ends.get(&m.partition()).is_some_and(|e| m.offset() + 1 >= *e) {
            ends.remove(&m.partition());
        }
    }
    out
}

/// Publishes raw records to base topic `topic` (duplicates, poison messages).
pub async fn publish_raw(env: &TestEnv, topic: &str, key: &str, payload: Vec<u8>, headers: Vec<(String, String)>) {
    let k = env.kafka();
    let p = spm_bus::Producer::new(&k).expect("producer");
    p.send(&spm_bus::Record {
        topic: k.topic(topic),
        key: key.to_owned(),
        payload,
        headers,
    })
    .await
    .expect("publish");
}
