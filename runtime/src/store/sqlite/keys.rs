//! Concurrency keys' places (see [`crate::store::keys`]): a key's counts in its
//! `concurrency_keys` row, its waiting jobs marked `waits_on_key` (out of `jobs_queued`, so
//! no claim sees them). Every function runs inside the caller's write transaction.

use rusqlite::params;

use super::{Tx, query};
use crate::store::Result;
use crate::store::keys::KeyCount;
use crate::store::model::{Concurrency, JobState};

fn count(tx: &Tx<'_>, key: &str) -> Result<KeyCount> {
    let row = query(tx, include_str!("keys/key_count.sql"), [key], |r| {
        Ok(KeyCount {
            active: r.get(0)?,
            waiting: r.get(1)?,
        })
    })?;
    Ok(row.into_iter().next().unwrap_or_default())
}

fn store(tx: &Tx<'_>, key: &str, count: KeyCount) -> Result<()> {
    if count.is_empty() {
        tx.prepare_cached(include_str!("keys/drop_key.sql"))?
            .execute([key])?;
    } else {
        tx.prepare_cached(include_str!("keys/store_key.sql"))?
            .execute(params![key, count.active, count.waiting])?;
    }
    Ok(())
}

/// A job of `concurrency` (if it has a key) comes to its key, submitted or put back in the
/// queue by hand: `true` when it must wait for a place (the caller marks it `waits_on_key`).
pub(super) fn waits(tx: &Tx<'_>, concurrency: Option<&Concurrency>) -> Result<bool> {
    let Some(concurrency) = concurrency else {
        return Ok(false);
    };
    let mut c = count(tx, &concurrency.key)?;
    let admitted = c.admit(concurrency.limit);
    store(tx, &concurrency.key, c)?;
    Ok(!admitted)
}

/// An admitted job of `key` ended: its place goes to the first waiting job, if any may take
/// it. Returns whether a job that took a place is queued (claimable now).
pub(super) fn release(tx: &Tx<'_>, key: &str) -> Result<bool> {
    let mut c = count(tx, key)?;
    let look = c.release(1);
    let mut queued = false;
    if look > 0 {
        let first: Vec<(i64, i64, String)> = query(
            tx,
            include_str!("keys/first_waiting.sql"),
            params![key, look],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        for (id, limit, state) in first {
            if !c.promote(limit) {
                break;
            }
            tx.prepare_cached(include_str!("keys/take_place.sql"))?
                .execute([id])?;
            queued |= state == JobState::Queued.as_str();
        }
    }
    store(tx, key, c)?;
    Ok(queued)
}

/// Job `id` of `key` ended (cancelled, or its deadline passed): frees its place when it held
/// one, or leaves the key's waiting jobs when it waited. Returns whether a job that took its
/// place is queued.
pub(super) fn ended(tx: &Tx<'_>, id: i64, key: &str, waited: bool) -> Result<bool> {
    if !waited {
        return release(tx, key);
    }
    tx.prepare_cached(include_str!("keys/take_place.sql"))?
        .execute([id])?;
    let mut c = count(tx, key)?;
    c.left_waiting();
    store(tx, key, c)?;
    Ok(false)
}
