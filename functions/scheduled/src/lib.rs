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
}

impl Job {
    pub const ALL: [Job; 1] = [Job::PurgeExpired];

    pub fn name(self) -> &'static str {
        match self {
            Job::PurgeExpired => "purge-expired",
        }
    }

    /// How often the local system runs it.
    pub fn every(self) -> std::time::Duration {
        match self {
            Job::PurgeExpired => std::time::Duration::from_secs(300),
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

pub async fn run(job: Job, deps: &Deps) -> Result<JobReport> {
    let report = match job {
        Job::PurgeExpired => jobs::purge_expired(&deps.store).await?,
    };
    tracing::info!(
        job = job.name(),
        processed = report.processed,
        failed = report.failed,
        "job finished"
    );
    Ok(report)
}

/// What the EventBridge rule sends: its `Input`, `{"job": "<name>"}`.
#[derive(Debug, Deserialize)]
pub struct ScheduledInput {
    pub job: String,
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
}
