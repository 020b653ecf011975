//! The queue's vacuum: keeps `job_queue` and `claims` free of dead rows, when the node's upkeep
//! asks ([`QueueStore::tidy_queue`](crate::store::QueueStore::tidy_queue)).

use std::sync::atomic::Ordering;

use sqlx::Executor;

use super::PgStore;
use crate::store::Result;

/// Dead queue rows that make a vacuum of the queue worth its cost: the claim walks the dead
/// entries at the front of the queue's index, ~200 to a page, until a vacuum removes them.
const VACUUM_AFTER_ROWS: u64 = 2000;

impl PgStore {
    /// Vacuums the queue's tables once this store has removed [`VACUUM_AFTER_ROWS`] rows from
    /// them since the last time (`churn`). A claim finds the next job by walking
    /// `job_queue_claim` from its front, and every job claimed leaves a dead entry there until a
    /// vacuum removes it: with autovacuum off, 55,000 jobs later a claim read 250 index pages
    /// (2.9 ms) to find none. Autovacuum's defaults wait up to a minute, by which time a busy
    /// node has left hundreds of thousands. The tables are narrow (a job id, its order and its
    /// deadline), so the vacuum is cheap. `SKIP_LOCKED`: a vacuum that another node runs is not
    /// waited for. It never truncates the tables (`TRUNCATE FALSE`, and `vacuum_truncate` off
    /// for autovacuum): truncating takes an exclusive lock, and every claim and submission
    /// would queue up behind it. The vacuum also refreshes the queue's statistics, which makes
    /// cached plans that read it be planned again for its current size.
    pub(super) async fn vacuum_queue(&self) -> Result<bool> {
        if self.churn.load(Ordering::Relaxed) < VACUUM_AFTER_ROWS {
            return Ok(false);
        }
        self.churn.store(0, Ordering::Relaxed);
        self.pool.execute(include_str!("vacuum.sql")).await?;
        Ok(true)
    }
}
