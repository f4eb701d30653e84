//! What SPM needs from the broker, checked against the real one: topics are created by SPM
//! with its partition count and never auto-created by a producer or a subscriber (the
//! broker would make them with 4 partitions), and the idempotent producer recovers by
//! itself after a broker pause and after its records timed out.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use spm_core::topics;
use spm_testkit::{TestEnv, eventually};

/// Partitions of `topic` as the broker reports them, without asking it to create the topic
/// (`None`: it does not exist).
fn partitions(env: &TestEnv, topic: &str) -> Option<usize> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.stack.brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("metadata client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    (t.error().is_none() && !t.partitions().is_empty()).then(|| t.partitions().len())
}

fn record(topic: &str) -> spm_bus::Record {
    spm_bus::Record {
        topic: topic.to_owned(),
        key: "k".into(),
        payload: b"v".to_vec(),
        headers: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spm_creates_its_topics_and_nothing_auto_creates_one() {
    let env = TestEnv::new("broker-topics").await;
    let mut k = env.kafka();
    k.delivery_timeout_ms = 2_000;

    // The hazard is real: a client with librdkafka's producer defaults gets a topic made
    // by the broker, with the broker's partition count rather than SPM's.
    let raw_topic = k.topic("auto.created.by.default");
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.stack.brokers)
        .set("message.timeout.ms", "5000")
        .create()
        .expect("raw producer");
    raw.send(
        FutureRecord::to(&raw_topic).key("k").payload("v"),
        Duration::from_secs(5),
    )
    .await
    .expect("a default producer writes to a topic the broker makes up");
    let auto = partitions(&env, &raw_topic).expect("the broker auto-created the topic");
    assert_ne!(
        auto,
        usize::try_from(env.partitions).unwrap(),
        "auto-creation does not use SPM's partition count"
    );

    // SPM's producer does not: the record fails after the delivery timeout, no topic.
    let missing = k.topic("never.created");
    let p = spm_bus::Producer::new(&k).expect("producer");
    let started = Instant::now();
    let r = p.send(&record(&missing)).await;
    assert!(
        r.is_err(),
        "a record for a missing topic is not acknowledged: {r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded failure"
    );
    assert_eq!(partitions(&env, &missing), None, "the producer created it");

    // Neither does subscribing (SPM's consumer settings).
    let sub = k.topic("subscribed.only");
    let c: BaseConsumer = k
        .consumer_config(&k.group("broker-topics"))
        .create()
        .expect("consumer");
    c.subscribe(&[&sub]).expect("subscribe");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let _ = c.poll(Duration::from_millis(100));
    }
    drop(c);
    assert_eq!(partitions(&env, &sub), None, "subscribing created it");

    // SPM's own topics get SPM's partition count, and writes to them succeed.
    spm_bus::admin::ensure_topics(&k).await.expect("create");
    for t in [
        topics::DEALS,
        topics::ACTIVITIES,
        topics::ORG,
        topics::TENANTS,
        topics::SCORES,
        topics::EARNINGS,
    ] {
        assert_eq!(
            partitions(&env, &k.topic(t)),
            Some(usize::try_from(env.partitions).unwrap()),
            "{t}"
        );
    }
    p.send(&record(&k.topic(topics::DEALS)))
        .await
        .expect("write to a created topic");

    // The shared broker keeps what the test made up.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        k.admin_config().create().expect("admin");
    let _ = admin
        .delete_topics(&[&raw_topic], &rdkafka::admin::AdminOptions::new())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotent_producer_recovers_after_a_pause_and_after_timeouts() {
    let env = TestEnv::with_private_broker("broker-producer").await;
    let mut k = env.kafka();
    k.delivery_timeout_ms = 2_000;
    spm_bus::admin::ensure_topics(&k).await.expect("create");
    let topic = k.topic(topics::DEALS);
    let p = spm_bus::Producer::new(&k).expect("producer");
    p.send(&record(&topic)).await.expect("before the pause");

    let broker = env.broker.as_ref().expect("private broker");
    broker.pause();
    // Several batches time out while the broker does not answer (past the 6 s session
    // timeout too): the producer's in-flight sequence numbers are abandoned.
    for _ in 0..3 {
        let batch: Vec<_> = (0..20).map(|_| record(&topic)).collect();
        let results = p.send_all(&batch).await;
        assert!(
            results.iter().all(Result::is_err),
            "nothing is acknowledged by a stopped broker"
        );
    }
    broker.resume();

    let resumed = Instant::now();
    let delivered = eventually(Duration::from_secs(60), "the producer writes again", || {
        let p = p.clone();
        let topic = topic.clone();
        async move {
            let batch: Vec<_> = (0..20).map(|_| record(&topic)).collect();
            let r = p.send_all(&batch).await;
            r.iter().all(Result::is_ok).then_some(r.len())
        }
    })
    .await;
    eprintln!(
        "producer writing again {:.1} s after the broker resumed",
        resumed.elapsed().as_secs_f64()
    );
    assert_eq!(delivered, 20);
    // And keeps writing: no stuck producer id, no fatal error left behind.
    for _ in 0..5 {
        let r = p.send_all(&[record(&topic), record(&topic)]).await;
        assert!(r.iter().all(Result::is_ok), "{r:?}");
    }
    assert_eq!(p.fatal_error(), None);
}
