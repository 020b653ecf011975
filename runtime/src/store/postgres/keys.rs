//! Concurrency keys' places on Postgres (see [`crate::store::keys`]): a key's counts in its
//! `concurrency_keys` row, its waiting jobs in `key_waits` (out of `job_queue`, so no claim
//! sees them). A transaction that admits or ends keyed jobs locks their keys first
//! ([`Places::lock`]: advisory locks on the keys' hashes, in hash order, after any job rows
//! it locks: every writer takes them in that order, so two never wait for each other), then
//! reads their counts, and writes each key's row once, at the end: a key's first job inserts
//! it, and the end of its last job deletes it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::{PgStore, Tx};
use crate::store::Result;
use crate::store::keys::KeyCount;
use crate::store::model::Concurrency;

/// The places of some keys, locked by the transaction that holds this.
pub(super) struct Places {
    counts: BTreeMap<String, KeyCount>,
    /// A waiting job took a place and is queued: nodes should look.
    pub jobs_available: bool,
}

impl Places {
    /// Locks `keys` for the rest of `tx` and reads their counts (after the locks: a read in
    /// the statement that waits for them would see the counts from before the wait).
    pub(super) async fn lock<'k>(
        tx: &mut Tx<'_>,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<Places> {
        let mut names: Vec<&str> = keys.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        let rows: Vec<(String, i64, i64)> = if names.is_empty() {
            Vec::new()
        } else {
            sqlx::query(include_str!("keys/lock_keys.sql"))
                .bind(&names)
                .execute(&mut **tx)
                .await?;
            sqlx::query_as(include_str!("keys/key_counts.sql"))
                .bind(&names)
                .fetch_all(&mut **tx)
                .await?
        };
        Ok(Places {
            counts: rows
                .into_iter()
                .map(|(key, active, waiting)| (key, KeyCount { active, waiting }))
                .collect(),
            jobs_available: false,
        })
    }

    fn count(&mut self, key: &str) -> &mut KeyCount {
        self.counts.entry(key.to_string()).or_default()
    }

    /// A job of `concurrency` comes to its key: `true` when it has a place, `false` when it
    /// waits (the caller puts it in `key_waits` instead of the queue).
    pub(super) fn admit(&mut self, concurrency: &Concurrency) -> bool {
        self.count(&concurrency.key).admit(concurrency.limit)
    }

    /// `ended[key]` admitted jobs of each key ended: their places go to the first waiting
    /// jobs that may take them, which join the queue.
    pub(super) async fn release(
        &mut self,
        tx: &mut Tx<'_>,
        ended: &BTreeMap<String, i64>,
        store: &PgStore,
    ) -> Result<()> {
        let (mut keys, mut look) = (Vec::new(), Vec::new());
        for (key, n) in ended {
            let n = self.count(key).release(*n);
            if n > 0 {
                keys.push(key.as_str());
                look.push(n);
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let first: Vec<(String, i64, i64)> = sqlx::query_as(include_str!("keys/first_waiting.sql"))
            .bind(&keys)
            .bind(&look)
            .fetch_all(&mut **tx)
            .await?;
        let mut taking = Vec::new();
        let mut stopped: Option<String> = None;
        for (key, id, limit) in first {
            // In order within a key: once one cannot take a place, nor can those behind it.
            if stopped.as_deref() == Some(key.as_str()) {
                continue;
            }
            if self.count(&key).promote(limit) {
                taking.push(id);
            } else {
                stopped = Some(key);
            }
        }
        if taking.is_empty() {
            return Ok(());
        }
        let queued: Vec<(bool, i64, Option<i64>)> =
            sqlx::query_as(include_str!("keys/take_places.sql"))
                .bind(&taking)
                .fetch_all(&mut **tx)
                .await?;
        for (ready, run_at, deadline_at) in queued {
            if ready {
                self.jobs_available = true;
            } else {
                store.sweep_by(run_at);
            }
            if let Some(at) = deadline_at {
                store.sweep_by(at);
            }
        }
        Ok(())
    }

    /// Waiting job `id` of `key` ended without a place (cancelled): it leaves the key's
    /// waiting jobs. `false` if it was not waiting (it held a place).
    pub(super) async fn leave_waiting(
        &mut self,
        tx: &mut Tx<'_>,
        id: i64,
        key: &str,
    ) -> Result<bool> {
        let waited: Option<String> = sqlx::query_scalar(include_str!("keys/leave_waiting.sql"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        if waited.is_some() {
            self.count(key).left_waiting();
        }
        Ok(waited.is_some())
    }

    /// Writes the keys' counts back (a key with nothing admitted or waiting loses its row);
    /// each row written counts towards the next vacuum of the queue's tables.
    pub(super) async fn store(self, tx: &mut Tx<'_>, store: &PgStore) -> Result<bool> {
        if self.counts.is_empty() {
            return Ok(self.jobs_available);
        }
        store
            .churn
            .fetch_add(self.counts.len() as u64, Ordering::Relaxed);
        let mut keys = Vec::with_capacity(self.counts.len());
        let mut active = Vec::with_capacity(self.counts.len());
        let mut waiting = Vec::with_capacity(self.counts.len());
        for (key, c) in &self.counts {
            keys.push(key.as_str());
            active.push(c.active);
            waiting.push(c.waiting);
        }
        sqlx::query(include_str!("keys/store_keys.sql"))
            .bind(&keys)
            .bind(&active)
            .bind(&waiting)
            .execute(&mut **tx)
            .await?;
        Ok(self.jobs_available)
    }
}
