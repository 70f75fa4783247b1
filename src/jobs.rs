//! Scheduled work, run in UTC by tokio-cron-scheduler (jobs live in memory; each instance runs its
//! own). Today: pruning idle per-IP HTTP rate windows so memory stays bounded by active clients.
//! The anomaly detector and retention join here.

use std::sync::Arc;
use std::time::Duration;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::http::Hardening;

const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Jobs {
    scheduler: JobScheduler,
}

impl Jobs {
    pub async fn start(hardening: Arc<Hardening>) -> Result<Self, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        scheduler
            .add(Job::new_repeated_async(PRUNE_EVERY, move |_, _| {
                let hardening = hardening.clone();
                Box::pin(async move { hardening.prune() })
            })?)
            .await?;
        scheduler.start().await?;
        Ok(Self { scheduler })
    }

    pub async fn stop(mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!(error = %e, "scheduled jobs did not stop cleanly");
        }
    }
}
