//! Kafka settings shared by every service (flags and env vars).

use std::time::Duration;

use rdkafka::ClientConfig;

/// How a service talks to Kafka.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated host:port.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        value_name = "KAFKA_BROKERS",
        default_value = "127.0.0.1:59092"
    )]
    pub brokers: String,

    /// Prefix for every topic and consumer-group name (isolates environments and tests).
    #[arg(
        long = "kafka-topic-prefix",
        env = "KAFKA_TOPIC_PREFIX",
        value_name = "KAFKA_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,

    /// Partitions of topics SPM creates at start when they are missing.
    #[arg(long = "kafka-partitions", env = "KAFKA_PARTITIONS", value_name = "KAFKA_PARTITIONS", default_value_t = 6,
          value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub partitions: i32,

    /// Replication factor of topics SPM creates.
    #[arg(long = "kafka-replication", env = "KAFKA_REPLICATION", value_name = "KAFKA_REPLICATION", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..=16))]
    pub replication: i32,

    /// Consumer session timeout: how long the group waits before it gives a silent
    /// member's partitions to the others (after a SIGKILL, a crash, a partition). 6 s is
    /// the lowest Apache Kafka accepts by default (`group.min.session.timeout.ms`); a
    /// broker stall longer than this costs a rebalance, after which the group re-forms
    /// and consumes on. Heartbeats go out every 2 s (a third of this).
    #[arg(long = "kafka-session-timeout-ms", env = "KAFKA_SESSION_TIMEOUT_MS", value_name = "KAFKA_SESSION_TIMEOUT_MS",
          default_value_t = DEFAULT_SESSION_TIMEOUT_MS, value_parser = clap::value_parser!(u32).range(1000..=300_000))]
    pub session_timeout_ms: u32,

    /// Longest a fetch waits for data. librdkafka's 500 ms default would dominate the
    /// event-to-earnings latency, so it is 10 ms here.
    #[arg(long = "kafka-fetch-wait-max-ms", env = "KAFKA_FETCH_WAIT_MAX_MS", value_name = "KAFKA_FETCH_WAIT_MAX_MS",
          default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub fetch_wait_max_ms: u32,

    /// How long the producer lingers to batch records.
    #[arg(long = "kafka-linger-ms", env = "KAFKA_LINGER_MS", value_name = "KAFKA_LINGER_MS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub linger_ms: u32,

    /// How long a produce may take before it is reported as failed (broker unreachable).
    #[arg(long = "kafka-delivery-timeout-ms", env = "KAFKA_DELIVERY_TIMEOUT_MS", value_name = "KAFKA_DELIVERY_TIMEOUT_MS",
          default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1000..=900_000))]
    pub delivery_timeout_ms: u32,

    /// Extra librdkafka properties, comma-separated key=value (e.g. TLS or SASL settings
    /// for a production cluster: security.protocol=SASL_SSL,sasl.mechanism=PLAIN,...).
    #[arg(long = "kafka-config", env = "KAFKA_CONFIG", value_name = "KAFKA_CONFIG", default_value = "",
          value_parser = parse_extra)]
    pub extra: Extra,
}

/// The default consumer session timeout (see [`KafkaConfig::session_timeout_ms`]).
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 6_000;

/// Extra librdkafka properties.
#[derive(Debug, Clone, Default)]
pub struct Extra(pub Vec<(String, String)>);

fn parse_extra(s: &str) -> Result<Extra, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        out.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(Extra(out))
}

impl KafkaConfig {
    /// Settings for a local broker at `brokers` with a topic prefix (tests, tools).
    pub fn local(brokers: &str, topic_prefix: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            topic_prefix: topic_prefix.to_owned(),
            partitions: 6,
            replication: 1,
            session_timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
            fetch_wait_max_ms: 10,
            linger_ms: 2,
            delivery_timeout_ms: 10_000,
            extra: Extra::default(),
        }
    }

    /// The full name of a topic (prefix + base name).
    pub fn topic(&self, base: &str) -> String {
        format!("{}{}", self.topic_prefix, base)
    }

    /// The base name of a full topic name.
    pub fn base_topic<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(self.topic_prefix.as_str())
            .unwrap_or(full)
    }

    /// The full name of a consumer group.
    pub fn group(&self, base: &str) -> String {
        format!("{}{}", self.topic_prefix, base)
    }

    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.session_timeout_ms))
    }

    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.delivery_timeout_ms))
    }

    /// Settings of the idempotent producer: acks from all in-sync replicas, lz4, a short
    /// linger so batches form without adding latency. It never asks the broker to create
    /// a topic it writes to (librdkafka's producer does by default, and a broker that
    /// auto-creates would make it with its own partition count): SPM creates its topics
    /// at start ([`crate::admin::ensure_topics`]), and a record for a missing topic waits
    /// in the queue until the topic exists or the delivery timeout fails it.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .set("queue.buffering.max.messages", "1000000")
            // librdkafka would buffer up to 1 GiB; 64 MiB is ample and keeps the process small.
            .set("queue.buffering.max.kbytes", "65536")
            .set("allow.auto.create.topics", "false");
        self.with_extra(c)
    }

    /// Settings of an at-least-once group consumer: offsets are stored by the loop after
    /// the database commit (never automatically on receipt) and auto-committed from there.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Subscribing to a topic never creates it (librdkafka's consumer default, stated).
            .set("allow.auto.create.topics", "false")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 3).clamp(100, 2000).to_string(),
            )
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            // Prefetch bounded to a few MiB (librdkafka defaults to 64 MiB and 100k
            // messages): enough to keep replays and backlogs fed.
            .set("queued.max.messages.kbytes", "8192")
            .set("queued.min.messages", "10000")
            // Large fetches: per-request overhead at the broker is what limits a backlog's
            // replay (scoring applied 17.5k events/s with 8 MiB, 13k with 1 MiB). A loop
            // whose batches are slow anyway can ask for less (`ConsumerLoop::prefetch`).
            .set("fetch.max.bytes", "8388608")
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set("statistics.interval.ms", "5000");
        self.with_extra(c)
    }

    /// Settings of the admin client.
    pub fn admin_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        self.with_extra(c)
    }

    /// Whether `KAFKA_CONFIG` sets `property` (an operator's setting wins over ours).
    pub fn sets(&self, property: &str) -> bool {
        self.extra.0.iter().any(|(k, _)| k == property)
    }

    fn with_extra(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.extra.0 {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_properties_parse_and_reject_garbage() {
        let e = parse_extra("security.protocol=SSL, ssl.ca.location = /ca.pem").unwrap();
        assert_eq!(
            e.0,
            vec![
                ("security.protocol".to_owned(), "SSL".to_owned()),
                ("ssl.ca.location".to_owned(), "/ca.pem".to_owned())
            ]
        );
        assert!(parse_extra("nonsense").is_err());
        assert!(parse_extra("").unwrap().0.is_empty());
    }

    #[test]
    fn extras_override_defaults() {
        let mut k = KafkaConfig::local("b:1", "t.");
        k.extra = Extra(vec![("linger.ms".into(), "50".into())]);
        assert_eq!(k.producer_config().get("linger.ms"), Some("50"));
        assert_eq!(k.topic("x"), "t.x");
        assert_eq!(k.base_topic("t.x"), "x");
    }
}
