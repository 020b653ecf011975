//! Concurrency keys' places on Postgres (see [`crate::store::keys`]): a key's counts in its
//! `concurrency_keys` row, its waiting jobs in `key_waits` (out of `job_queue`, so no claim
//! sees them). The bookkeeping runs in the server, in the statements that admit and end jobs
//! (`wasmjobs_admit` and `wasmjobs_release`, migration 0006, the same rules as `KeyCount`),
//! so that a keyed submission group or ending is still one statement. Keys are locked by
//! advisory locks on their hashes, in hash order, after any job rows: every writer takes them
//! in that order. These are the rarer paths (a retry by hand, a cancel, the sweep).

use super::{PgStore, Tx};
use crate::store::Result;
use crate::store::model::Concurrency;

/// Locks `keys` for the rest of `tx` (before statements that each lock some of them).
pub(super) async fn lock(tx: &mut Tx<'_>, keys: &[&str]) -> Result<()> {
    if !keys.is_empty() {
        sqlx::query(include_str!("keys/lock_keys.sql"))
            .bind(keys)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A job of `concurrency` (if it has a key) comes to its key: `true` when it waits for a
/// place.
pub(super) async fn waits(tx: &mut Tx<'_>, concurrency: Option<&Concurrency>) -> Result<bool> {
    let Some(concurrency) = concurrency else {
        return Ok(false);
    };
    let waits: Vec<bool> = sqlx::query_scalar(include_str!("keys/admit.sql"))
        .bind([concurrency.key.as_str()])
        .bind([i64::from(concurrency.limit)])
        .fetch_one(&mut **tx)
        .await?;
    Ok(waits.first().copied().unwrap_or(false))
}

/// Admitted jobs of `ended` (a key once per job) ended: their places go to the first waiting
/// jobs that may take them. Returns whether one of those is queued (nodes should look).
pub(super) async fn release(tx: &mut Tx<'_>, ended: &[String], store: &PgStore) -> Result<bool> {
    if ended.is_empty() {
        return Ok(false);
    }
    let taken: Vec<(bool, i64, Option<i64>)> = sqlx::query_as(include_str!("keys/release.sql"))
        .bind(ended)
        .fetch_all(&mut **tx)
        .await?;
    Ok(took_places(&taken, store))
}

/// The queue rows of jobs that took places: the sweep comes for those that wait for a time or
/// must start before one. Whether one is ready.
fn took_places(taken: &[(bool, i64, Option<i64>)], store: &PgStore) -> bool {
    let mut ready = false;
    for &(is_ready, run_at, deadline_at) in taken {
        if is_ready {
            ready = true;
        } else {
            store.sweep_by(run_at);
        }
        if let Some(at) = deadline_at {
            store.sweep_by(at);
        }
    }
    ready
}

/// Job `id` of `key` ended without running (cancelled): it leaves the key's waiting jobs if it
/// waited, or hands its place on if it held one. Returns whether a job that took the place is
/// queued.
pub(super) async fn ended_waiting(
    tx: &mut Tx<'_>,
    id: i64,
    key: &str,
    store: &PgStore,
) -> Result<bool> {
    lock(tx, &[key]).await?;
    let left: Option<bool> = sqlx::query_scalar(include_str!("keys/leave_waiting.sql"))
        .bind(id)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
    match left {
        Some(empty) => {
            if empty {
                sqlx::query(include_str!("keys/drop_key.sql"))
                    .bind(key)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(false)
        }
        None => release(tx, &[key.to_string()], store).await,
    }
}
