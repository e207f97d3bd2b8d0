//! Scheduled jobs that need nothing but the store. Jobs with providers live with their
//! functions; `functions/scheduled` is the registry that names them all.

use serde::Serialize;

use crate::store::Store;
use crate::Result;

/// What a job run did, printed by `voyage jobs run` and logged on Lambda.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobReport {
    pub job: String,
    /// Records the job acted on.
    pub processed: u64,
    /// Records it could not act on (each logged with its reason).
    pub failed: u64,
}

/// Removes items past their TTL. DynamoDB expires items by itself (and reports 0 here);
/// the embedded store relies on this job, which the local system runs every five minutes.
pub async fn purge_expired(store: &Store) -> Result<JobReport> {
    let processed = store.table().purge_expired(store.now().timestamp()).await?;
    Ok(JobReport {
        job: "purge-expired".into(),
        processed,
        failed: 0,
    })
}
