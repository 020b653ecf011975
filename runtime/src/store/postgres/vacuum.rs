//! The queue's vacuum: keeps `job_queue` and `claims` free of dead rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{Executor, PgPool};

/// Dead queue rows that make a vacuum of the queue worth its cost: the claim walks the dead
/// entries at the front of the queue's index, ~200 to a page, until a vacuum removes them.
const VACUUM_AFTER_ROWS: u64 = 2000;

/// Keeps the queue's tables vacuumed until `stop`. A claim finds the next job by walking
/// `job_queue_claim` from its front, and every job claimed leaves a dead entry there until a
/// vacuum removes it: after 55,000 jobs with autovacuum off, a claim read 250 index pages
/// (2.9 ms) to find none, and at 500 jobs/s that cost a core. Autovacuum's defaults wait up to
/// a minute, by which time a busy node has left hundreds of thousands. The tables are narrow
/// (a job id, its order and its deadline), so the vacuum is cheap: it runs once this node has
/// removed [`VACUUM_AFTER_ROWS`] rows since the last one (`churn`), and never takes more than a
/// tenth of the time (`SKIP_LOCKED`: a vacuum that another node runs is not waited for). It
/// never truncates the tables (`TRUNCATE FALSE`, and `vacuum_truncate` off for autovacuum):
/// truncating takes an exclusive lock, and every claim and submission would queue up behind it.
pub(super) async fn vacuum_queue(
    pool: PgPool,
    churn: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut warned = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if pool.is_closed() {
            return;
        }
        if churn.load(Ordering::Relaxed) < VACUUM_AFTER_ROWS {
            continue;
        }
        churn.store(0, Ordering::Relaxed);
        let started = std::time::Instant::now();
        match pool.execute(include_str!("vacuum.sql")).await {
            Ok(_) => tokio::time::sleep(started.elapsed() * 9).await,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    "cannot vacuum the job queue ({e}); claims slow down as dead rows pile up \
                     unless autovacuum keeps up"
                );
            }
            Err(_) => {}
        }
    }
}
