//! Scheduled work, run in UTC by tokio-cron-scheduler (jobs live in memory; each instance runs its
//! own): pruning idle per-IP HTTP rate windows so memory stays bounded by active clients, and
//! retention (`crate::retention`, CONTRACT §11.6): first 60 s after start, then every
//! `RETENTION_INTERVAL_SECONDS`, on the service clock; nothing with `DATA_RETENTION_ENABLED=false`.
//! The anomaly detector joins here.

use std::sync::Arc;
use std::time::Duration;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::clock::Clock;
use crate::config::Config;
use crate::http::Hardening;
use crate::store::Store;

const PRUNE_EVERY: Duration = Duration::from_secs(60);
const RETENTION_FIRST_RUN: Duration = Duration::from_secs(60);

/// What the retention job needs.
#[derive(Clone)]
pub struct RetentionJob {
    pub store: Store,
    pub config: Arc<Config>,
    pub clock: Clock,
}

impl RetentionJob {
    async fn run(&self) {
        match crate::retention::run(&self.store, &self.config, self.clock.now()).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention run failed; the next run retries"),
        }
    }
}

pub struct Jobs {
    scheduler: JobScheduler,
}

impl Jobs {
    pub async fn start(hardening: Arc<Hardening>, retention: RetentionJob) -> Result<Self, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        if retention.config.data_retention_enabled {
            // One shot at 60 s, which runs and then schedules the repeated runs.
            let every = Duration::from_secs(retention.config.retention_interval_seconds);
            let repeat_on = scheduler.clone();
            scheduler
                .add(Job::new_one_shot_async(RETENTION_FIRST_RUN, move |_, _| {
                    let (retention, scheduler) = (retention.clone(), repeat_on.clone());
                    Box::pin(async move {
                        retention.run().await;
                        let again = retention.clone();
                        let job = Job::new_repeated_async(every, move |_, _| {
                            let again = again.clone();
                            Box::pin(async move { again.run().await })
                        });
                        match job {
                            Ok(job) => {
                                if let Err(e) = scheduler.add(job).await {
                                    tracing::warn!(error = %e, "retention runs not scheduled");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "retention runs not scheduled"),
                        }
                    })
                })?)
                .await?;
        }
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
