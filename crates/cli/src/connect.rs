//! `spm connect`: where the CRM connectors stand (checkpoints, counts, errors), the records
//! they could not map, and the choice for a checkpoint older than the CRM's retention.

use spm_proto::connect::v1 as pb;
use spm_proto::connect::v1::connect_service_client::ConnectServiceClient;
use spm_testkit::authed;

use crate::Cli;
use crate::commands::{channel, key, status_error};
use crate::out::{note, table, title};

#[derive(Debug, clap::Subcommand)]
pub enum ConnectCmd {
    /// Each stream: state, checkpoint and its age, events in, submitted, rejected, pending.
    Status,
    /// The CRM records not submitted, newest first, with the field and the reason.
    Errors {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A Salesforce stream whose checkpoint is older than the CRM's retention: `--resync`
    /// replays what the CRM still retains (duplicates collapse in ingest), `--skip` starts
    /// with what is published from now on.
    Resolve {
        /// The Pub/Sub topic, e.g. /data/OpportunityChangeEvent.
        stream: String,
        #[arg(long, conflicts_with = "skip", required_unless_present = "skip")]
        resync: bool,
        #[arg(long)]
        skip: bool,
    },
}

fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(spm_proto::ext::datetime)
        .map_or_else(String::new, |t| {
            let age = chrono::Utc::now() - t;
            format!(
                "{} ({} ago)",
                t.format("%Y-%m-%d %H:%M:%S"),
                age_text(age.num_seconds())
            )
        })
}

fn age_text(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub async fn run(cli: &Cli, cmd: &ConnectCmd) -> anyhow::Result<()> {
    let mut c = ConnectServiceClient::new(channel(&cli.connect).await?);
    let k = key(cli)?;
    match cmd {
        ConnectCmd::Status => {
            let r = c
                .get_status(authed(pb::GetStatusRequest {}, &k))
                .await
                .map_err(status_error)?
                .into_inner();
            title(&format!("Connectors of {}", r.tenant_id));
            let mut t = table(&[
                "source",
                "stream",
                "state",
                "checkpointed",
                "in",
                "submitted",
                "rejected",
                "pending",
                "last error",
            ]);
            for s in &r.sources {
                t.add_row(vec![
                    s.source.clone(),
                    s.stream.clone(),
                    s.state.clone(),
                    when(s.checkpointed_at.as_ref()),
                    s.events_in.to_string(),
                    s.submitted.to_string(),
                    s.rejected.to_string(),
                    s.pending.to_string(),
                    s.last_error.clone(),
                ]);
            }
            println!("{t}");
            if r.sources.iter().any(|s| s.state == "STALE_CHECKPOINT") {
                note("a stream waits for you: spm connect resolve <stream> --resync | --skip");
            }
        }
        ConnectCmd::Errors { limit } => {
            let r = c
                .list_record_errors(authed(pb::ListRecordErrorsRequest { limit: *limit }, &k))
                .await
                .map_err(status_error)?
                .into_inner();
            let mut t = table(&[
                "at",
                "source",
                "record",
                "field",
                "reason",
                "message",
                "CRM event",
            ]);
            for e in &r.errors {
                t.add_row(vec![
                    e.at.as_ref()
                        .and_then(spm_proto::ext::datetime)
                        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                    e.source.clone(),
                    e.record_id.clone(),
                    e.field.clone(),
                    e.reason.clone(),
                    e.message.clone(),
                    e.crm_event_id.clone(),
                ]);
            }
            println!("{t}");
        }
        ConnectCmd::Resolve { stream, resync, .. } => {
            let action = if *resync {
                pb::CheckpointAction::Resync
            } else {
                pb::CheckpointAction::Skip
            };
            let r = c
                .resolve_checkpoint(authed(
                    pb::ResolveCheckpointRequest {
                        stream: stream.clone(),
                        action: action as i32,
                    },
                    &k,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            let s = r.status.unwrap_or_default();
            note(&format!("{} {}: {}", s.source, s.stream, s.state));
        }
    }
    Ok(())
}
