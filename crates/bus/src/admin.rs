//! Creating topics at start (idempotent): a consumer that subscribes before its topic
//! exists does not see it appear until the next metadata refresh.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::KafkaConfig;

/// Creates every SPM topic that is missing (compacted ones with `cleanup.policy=compact`).
pub async fn ensure_topics(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = cfg.admin_config().create()?;
    let names = topic_names(cfg);
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|(name, compacted)| {
            let t = NewTopic::new(
                name,
                cfg.partitions,
                TopicReplication::Fixed(cfg.replication),
            );
            if *compacted {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(%topic, ?code, "could not create topic");
                });
            }
        }
    }
    Ok(())
}

/// Deletes every SPM topic of `cfg`'s prefix (test and benchmark clean-up: a broker that
/// keeps every topic in memory slows down as they pile up). Missing topics are fine.
pub async fn delete_topics(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = cfg.admin_config().create()?;
    let names = topic_names(cfg);
    let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(&names, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// Every SPM topic under `cfg`'s prefix, and whether it is compacted.
fn topic_names(cfg: &KafkaConfig) -> Vec<(String, bool)> {
    spm_core::topics::ALL
        .iter()
        .map(|(name, compacted)| (cfg.topic(name), *compacted))
        .collect()
}
