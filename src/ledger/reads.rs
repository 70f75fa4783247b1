//! What a send reads before it decides — the agent, its org's terms and the recipient as
//! compliance sees it (`directory::read::agent_org_and_contact`) — batched as the reservations
//! are: a read asked while no other is under way runs at once on its caller's task; one asked
//! while others are is queued, and every read queued while a statement is in Postgres goes in the
//! next one (`agents_orgs_and_contacts`). Reads only: nothing here decides or writes, so a batch
//! is one statement on a kept connection and no transaction.

use commguard_projections::contact::read::ContactState;
use commguard_projections::directory::read::{self as directory_read, AgentView, OrgTerms};
use tokio::sync::oneshot;

use crate::error::{ApiError, ErrorCode};
use crate::store::gather::{self, Gather};
use crate::store::kept::KeptPool;

/// The agent, its org's terms (`None` if the org row is missing) and the recipient's state.
pub type SendRead = (AgentView, Option<OrgTerms>, ContactState);

/// `None`: no such agent.
type Answer = Result<Option<SendRead>, ApiError>;

struct Job {
    agent_id: String,
    subject_ref: String,
    channel: &'static str,
    recording: bool,
    reply: oneshot::Sender<Answer>,
}

/// Reads per statement at most.
const MAX_BATCH: usize = 256;

#[derive(Clone)]
pub struct SendReads {
    /// A read that finds none other under way runs at once, on its caller's task.
    gather: Gather<Job>,
    pool: KeptPool,
}

impl SendReads {
    /// Starts the batching task; it ends when the last `SendReads` is dropped.
    pub fn start(pool: KeptPool) -> Self {
        let (batcher, mut jobs) = Gather::new();
        let reads = Self { gather: batcher, pool: pool.clone() };
        tokio::spawn(async move {
            while let Some(batch) = gather::next_batch(&mut jobs, MAX_BATCH).await {
                read_batch(&pool, batch).await;
            }
        });
        reads
    }

    /// The agent `agent_id`, its org and the recipient `subject_ref` (a blind index) on `channel`,
    /// with recording consent asked for when `recording`.
    pub async fn read(&self, agent_id: &str, subject_ref: String, channel: &'static str, recording: bool) -> Answer {
        let (reply, answer) = oneshot::channel();
        let stopped = || ApiError::new(ErrorCode::Unavailable, "The directory reader is shutting down");
        let job = Job { agent_id: agent_id.to_string(), subject_ref, channel, recording, reply };
        // Nothing to gather: read here, with no hand-over to the batching task and back.
        let alone = async |job| read_batch(&self.pool, vec![job]).await;
        self.gather.submit(job, answer, alone).await.ok_or_else(stopped)?
    }
}

/// One statement for `batch`; every job gets its own answer.
async fn read_batch(pool: &KeptPool, batch: Vec<Job>) {
    let mut conn = match pool.take().await {
        Ok(conn) => conn,
        Err(e) => return answer_all(batch, &ApiError::internal(e)),
    };
    if batch.len() == 1 {
        let job = batch.into_iter().next().expect("one job");
        let read = read_alone(&mut conn, &job.agent_id, &job.subject_ref, job.channel, job.recording).await;
        let _ = job.reply.send(read);
        return;
    }
    let listed: Vec<(&str, &str, &str, bool)> =
        batch.iter().map(|j| (j.agent_id.as_str(), j.subject_ref.as_str(), j.channel, j.recording)).collect();
    let reads = directory_read::agents_orgs_and_contacts(conn.conn(), &listed).await;
    conn.ended(&reads);
    match reads {
        Ok(reads) => {
            for (job, read) in batch.into_iter().zip(reads) {
                let _ = job.reply.send(Ok(read));
            }
        }
        Err(e) => answer_all(batch, &ApiError::internal(e)),
    }
}

/// One read by the one-agent statement.
async fn read_alone(
    conn: &mut crate::store::kept::Kept<'_>,
    agent_id: &str,
    subject_ref: &str,
    channel: &str,
    recording: bool,
) -> Answer {
    let read = directory_read::agent_org_and_contact(conn.conn(), agent_id, subject_ref, channel, recording).await;
    conn.ended(&read);
    read.map_err(ApiError::internal)
}

/// One classified error (one log line) for every job of a failed batch.
fn answer_all(batch: Vec<Job>, error: &ApiError) {
    for job in batch {
        let _ = job.reply.send(Err(error.clone()));
    }
}
