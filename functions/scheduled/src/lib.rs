//! The scheduled jobs: one registry, three ways in (the EventBridge rule on Lambda, the
//! local system's timers, and `voyage jobs run <job>`), all calling [`run`].

use serde::Deserialize;
use voyage_core::deps::Deps;
use voyage_core::jobs::{self, JobReport};
use voyage_core::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Remove records past their TTL (the embedded store's stand-in for DynamoDB TTL).
    PurgeExpired,
    /// Wake every pending webhook delivery whose attempt is overdue (its message was lost).
    RedriveWebhooks,
    /// Renew Graph subscriptions expiring within 24 h; recreate missing or failed ones.
    RenewSubscriptions,
    /// Cancel sessions whose pending cancellation's grace period has passed.
    CommitPendingCancellations,
    /// Queue a sync of every active or failed Google connection on the google-sync queue
    /// (the backstop for lost pushes; the google-sync workers run them).
    GoogleSync,
    /// Publish session events a failed publish or a crash left in their outboxes.
    RelayOutboxes,
    /// Queue a re-basing round for every Exchange connection whose sync window is a day old.
    RebaseSyncWindows,
    /// Queue the round a crashed round owed (its lease expired with a request coalesced).
    ResumeCoalescedRounds,
}

impl Job {
    pub const ALL: [Job; 8] = [
        Job::PurgeExpired,
        Job::RedriveWebhooks,
        Job::RenewSubscriptions,
        Job::CommitPendingCancellations,
        Job::GoogleSync,
        Job::RelayOutboxes,
        Job::RebaseSyncWindows,
        Job::ResumeCoalescedRounds,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Job::PurgeExpired => "purge-expired",
            Job::RedriveWebhooks => "redrive-webhooks",
            Job::RenewSubscriptions => "renew-subscriptions",
            Job::CommitPendingCancellations => "commit-pending-cancellations",
            Job::GoogleSync => "google-sync",
            Job::RelayOutboxes => "relay-outboxes",
            Job::RebaseSyncWindows => "rebase-sync-windows",
            Job::ResumeCoalescedRounds => "resume-coalesced-rounds",
        }
    }

    /// How often the local system runs it.
    pub fn every(self) -> std::time::Duration {
        match self {
            Job::PurgeExpired => std::time::Duration::from_secs(300),
            // Locally a lost wake-up cannot happen short of a crash; a minute keeps restarts
            // quick to resume.
            Job::RedriveWebhooks => std::time::Duration::from_secs(60),
            Job::RenewSubscriptions => std::time::Duration::from_secs(3600),
            // Locally every 30 s, so a grace period ends close to its due time.
            Job::CommitPendingCancellations => std::time::Duration::from_secs(30),
            Job::GoogleSync => std::time::Duration::from_secs(300),
            // Locally every 30 s: an event whose publish failed reaches webhooks soon.
            Job::RelayOutboxes => std::time::Duration::from_secs(30),
            Job::RebaseSyncWindows => std::time::Duration::from_secs(3600),
            Job::ResumeCoalescedRounds => std::time::Duration::from_secs(300),
        }
    }

    pub fn parse(name: &str) -> Result<Job> {
        Job::ALL
            .into_iter()
            .find(|j| j.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Job::ALL.iter().map(|j| j.name()).collect();
                Error::validation(
                    "job",
                    format!("unknown job `{name}`; known jobs: {}", known.join(", ")),
                )
            })
    }
}

/// How overdue a delivery must be before the sweep re-drives it: its own wake-up has had
/// time to arrive.
pub const REDRIVE_SLACK: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn run(job: Job, deps: &Deps) -> Result<JobReport> {
    let report = match job {
        Job::PurgeExpired => jobs::purge_expired(&deps.store).await?,
        Job::RedriveWebhooks => JobReport {
            job: job.name().into(),
            processed: voyage_core::webhooks::redrive_due(deps, REDRIVE_SLACK).await?,
            failed: 0,
        },
        Job::RenewSubscriptions => {
            // Graph subscriptions and Google channels alike; both run even if one fails.
            let exchange = voyage_core::exchange::channels::renew_all(deps).await;
            let google = voyage_core::google::channels::renew_all(deps).await;
            let (exchange, google) = (exchange?, google?);
            JobReport {
                job: job.name().into(),
                processed: exchange.processed + google.processed,
                failed: exchange.failed + google.failed,
            }
        }
        Job::GoogleSync => voyage_core::google::sync::sync_all(deps).await?,
        Job::CommitPendingCancellations => {
            voyage_core::exchange::sync::commit_pending_cancellations(deps).await?
        }
        Job::RelayOutboxes => voyage_core::booking::relay_outboxes(deps).await?,
        Job::RebaseSyncWindows => voyage_core::exchange::sync::rebase_sync_windows(deps).await?,
        Job::ResumeCoalescedRounds => {
            voyage_core::exchange::sync::resume_coalesced_rounds(deps).await?
        }
    };
    tracing::info!(
        job = job.name(),
        processed = report.processed,
        failed = report.failed,
        "job finished"
    );
    Ok(report)
}

/// A named set of jobs that one EventBridge rule runs together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every five minutes: sweeps of due records.
    FiveMinutes,
    /// Hourly: renewals of provider subscriptions and channels.
    Renewal,
}

impl Schedule {
    pub fn parse(name: &str) -> Result<Schedule> {
        match name {
            "five-minutes" => Ok(Schedule::FiveMinutes),
            "renewal" => Ok(Schedule::Renewal),
            other => Err(Error::validation(
                "schedule",
                format!("unknown schedule `{other}`; known: five-minutes, renewal"),
            )),
        }
    }

    pub fn jobs(self) -> &'static [Job] {
        match self {
            Schedule::FiveMinutes => &[
                Job::PurgeExpired,
                Job::RedriveWebhooks,
                Job::RelayOutboxes,
                Job::CommitPendingCancellations,
                Job::ResumeCoalescedRounds,
                Job::GoogleSync,
            ],
            // The rebase first: it only touches the store and the queues, and renewals can
            // spend the invocation's time on slow or throttling providers.
            Schedule::Renewal => &[Job::RebaseSyncWindows, Job::RenewSubscriptions],
        }
    }
}

/// What an EventBridge rule sends as its `Input`: `{"schedule": "five-minutes"}` (every
/// job of a schedule) or `{"job": "purge-expired"}` (one job).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledInput {
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub schedule: Option<String>,
}

/// Runs what `input` names. Every job runs even when an earlier one fails; the first error
/// is returned after all have run, so one broken job never starves the others.
pub async fn run_input(input: &ScheduledInput, deps: &Deps) -> Result<Vec<JobReport>> {
    let jobs: Vec<Job> = match (&input.job, &input.schedule) {
        (Some(job), None) => vec![Job::parse(job)?],
        (None, Some(schedule)) => Schedule::parse(schedule)?.jobs().to_vec(),
        _ => {
            return Err(Error::validation(
                "job",
                "give exactly one of `job` or `schedule`",
            ))
        }
    };
    let mut reports = Vec::new();
    let mut first_error = None;
    for job in jobs {
        match run(job, deps).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                tracing::error!(job = job.name(), error = %e, "job failed");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_round_trip_and_unknown_names_list_the_known() {
        for j in Job::ALL {
            assert_eq!(Job::parse(j.name()).ok(), Some(j));
        }
        let e = Job::parse("nope").unwrap_err();
        assert_eq!(e.field(), Some("job"));
        assert!(e.to_string().contains("purge-expired"));
    }

    #[test]
    fn every_job_belongs_to_a_schedule() {
        for j in Job::ALL {
            let scheduled = [Schedule::FiveMinutes, Schedule::Renewal]
                .iter()
                .any(|s| s.jobs().contains(&j));
            assert!(scheduled, "{} is on no schedule", j.name());
        }
        assert!(Schedule::parse("hourly").is_err());
    }
}
