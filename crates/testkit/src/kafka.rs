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
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every record of base topic `topic` in this environment, from the beginning to the end
/// offsets. Tansu can report a high watermark a moment behind an acknowledged write, so the
/// end offsets are re-read until two reads 200 ms apart agree.
pub fn read_topic(env: &TestEnv, topic: &str) -> Vec<Read> {
    let k = env.kafka();
    let full = k.topic(topic);
    let consumer: BaseConsumer = k
        .consumer_config(&format!("{}reader-{}", env.prefix, uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    let highs = |c: &BaseConsumer| -> std::collections::BTreeMap<i32, i64> {
        let md = c
            .fetch_metadata(Some(&full), Duration::from_secs(10))
            .expect("topic metadata");
        let mut m = std::collections::BTreeMap::new();
        for t in md.topics() {
            for p in t.partitions() {
                let (_, high) = c
                    .fetch_watermarks(&full, p.id(), Duration::from_secs(10))
                    .expect("watermarks");
                m.insert(p.id(), high);
            }
        }
        m
    };
    let mut ends = highs(&consumer);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let again = highs(&consumer);
        if again == ends {
            break;
        }
        ends = again;
    }
    let mut out = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for (p, high) in &ends {
        if *high > 0 {
            tpl.add_partition_offset(&full, *p, Offset::Beginning)
                .expect("tpl");
        }
    }
    let mut remaining: std::collections::BTreeMap<i32, i64> =
        ends.into_iter().filter(|(_, h)| *h > 0).collect();
    if remaining.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Past the reported ends, keep reading until the topic is quiet for a moment.
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        if remaining.is_empty()
            && quiet_since.is_some_and(|q| q.elapsed() > Duration::from_millis(500))
        {
            break;
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            if remaining.is_empty() {
                quiet_since.get_or_insert_with(Instant::now);
            }
            continue;
        };
        quiet_since = None;
        let m = m.expect("read record");
        let payload = m.payload().unwrap_or_default().to_vec();
        out.push(Read {
            partition: m.partition(),
            offset: m.offset(),
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .filter_map(|x| {
                            Some((x.key.to_owned(), String::from_utf8(x.value?.to_vec()).ok()?))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            envelope: EventEnvelope::decode(payload.as_slice()).ok(),
            payload,
        });
        if remaining
            .get(&m.partition())
            .is_some_and(|e| m.offset() + 1 >= *e)
        {
            remaining.remove(&m.partition());
        }
    }
    out
}

/// Publishes raw records to base topic `topic` (duplicates, poison messages).
pub async fn publish_raw(
    env: &TestEnv,
    topic: &str,
    key: &str,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
) {
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

/// Publishes an envelope the way SPM does (key, headers) to base topic `topic`.
pub async fn publish_envelope(env: &TestEnv, topic: &str, key: &str, e: &EventEnvelope) {
    let k = env.kafka();
    let rec = spm_bus::envelope_record(k.topic(topic), key.to_owned(), e, &tracing::Span::none());
    spm_bus::Producer::new(&k)
        .expect("producer")
        .send(&rec)
        .await
        .expect("publish");
}
