//! Scheduled work, run in UTC by tokio-cron-scheduler (jobs live in memory; each instance runs its
//! own): pruning idle per-IP HTTP rate windows so memory stays bounded by active clients, and
//! retention (`crate::retention`, docs/privacy.md#retention): first 60 s after start, then every
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

/// When retention runs: (delay of the first run after start, interval of the later ones).
pub fn retention_schedule(config: &Config) -> Option<(Duration, Duration)> {
    config
        .data_retention_enabled
        .then(|| (config.retention_first_run, Duration::from_secs(config.retention_interval_seconds)))
}

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
        if let Some((first, every)) = retention_schedule(&retention.config) {
            // One shot at `first` (60 s), which runs and then schedules the repeated runs.
            let repeat_on = scheduler.clone();
            scheduler
                .add(Job::new_one_shot_async(first, move |_, _| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| vars.get(name).cloned()).unwrap()
    }

    #[test]
    fn retention_runs_60_s_after_start_then_every_interval_and_not_at_all_when_disabled() {
        assert_eq!(retention_schedule(&config(&[])), Some((Duration::from_secs(60), Duration::from_secs(3600))));
        assert_eq!(
            retention_schedule(&config(&[("RETENTION_INTERVAL_SECONDS", "120")])),
            Some((Duration::from_secs(60), Duration::from_secs(120)))
        );
        assert_eq!(retention_schedule(&config(&[("DATA_RETENTION_ENABLED", "false")])), None);
    }
}
