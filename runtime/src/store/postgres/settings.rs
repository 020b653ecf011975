//! What a node knows of `job_settings` (decision 009): the limits and grants of the settings
//! its claims met (a key names its texts forever, so they never go stale), and when it last
//! made sure that the settings it submits with stay ([`touch_settings`]).

use sqlx::{Executor, Postgres};

use super::{PgStore, lock};
use crate::store::Result;
use crate::store::rows::ClaimRow;
use crate::store::settings::{Settings, settings_not_stored};

/// A submission makes sure that the settings it uses are marked used in the last this many
/// milliseconds (touching them when they are not), so that retention, which deletes only
/// settings unused for `SETTINGS_GRACE_MS` past the retention age, cannot delete them while
/// a submission that relies on them is in flight. A store that touched settings itself skips
/// the check for as long, so the mark is at most twice this old when the store relies on it.
const TOUCH_EVERY_MS: i64 = 10 * 60 * 1000;

#[derive(Default)]
pub(super) struct KnownSettings {
    texts: std::collections::HashMap<Vec<u8>, (String, String)>,
    touched: std::collections::HashMap<Vec<u8>, i64>,
}

impl KnownSettings {
    /// Past this many settings a map starts again: a node meets a handful, unless someone
    /// submits ever new ones.
    const MOST: usize = 4096;

    /// The keys of `settings` this store did not touch in the last [`TOUCH_EVERY_MS`]: the
    /// caller touches them before it submits, then records them with [`Self::touched`].
    pub(super) fn untouched(&self, settings: &[Settings], now: i64) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        for p in settings {
            let fresh = self
                .touched
                .get(&p.key[..])
                .is_some_and(|&at| now.saturating_sub(at) < TOUCH_EVERY_MS);
            if !fresh {
                keys.push(p.key.to_vec());
            }
        }
        keys
    }

    /// Gives the claimed jobs whose settings this store knows their limits and grants;
    /// returns the others' settings keys and ids.
    fn fill(&self, rows: &mut [ClaimRow]) -> Vec<(Vec<u8>, i64)> {
        let mut missing = Vec::new();
        for row in rows.iter_mut() {
            let found = match row.wants_settings() {
                None => continue,
                Some(key) => self.texts.get(key),
            };
            match found {
                Some((limits, grants)) => row.fill_settings(limits, grants),
                None => missing.extend(row.wants_settings().map(|k| (k.to_vec(), row.id()))),
            }
        }
        missing
    }

    pub(super) fn touched(&mut self, keys: Vec<Vec<u8>>, now: i64) {
        if self.touched.len() + keys.len() > Self::MOST {
            self.touched.clear();
        }
        for key in keys {
            self.touched.insert(key, now);
        }
    }
}

/// Marks the settings of `keys` used at `now` where their mark is older than
/// [`TOUCH_EVERY_MS`] (which locks them only then). Settings that are not stored stay so: the
/// submission that follows stores them.
pub(super) async fn touch_settings<'c, E>(exec: E, keys: &[Vec<u8>], now: i64) -> Result<()>
where
    E: Executor<'c, Database = Postgres>,
{
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(include_str!("jobs/touch_settings.sql"))
        .bind(keys)
        .bind(now)
        .bind(TOUCH_EVERY_MS)
        .execute(exec)
        .await?;
    Ok(())
}

impl PgStore {
    /// Gives the claimed jobs their settings' limits and grants: from what this store knows,
    /// else read (once per settings and node).
    pub(super) async fn take_settings(&self, rows: &mut [ClaimRow]) -> Result<()> {
        let mut missing = lock(&self.settings).fill(rows);
        if missing.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<Vec<u8>> = missing.into_iter().map(|(key, _)| key).collect();
        keys.sort_unstable();
        keys.dedup();
        let read: Vec<(Vec<u8>, String, String)> =
            sqlx::query_as(include_str!("queue/settings_texts.sql"))
                .bind(&keys)
                .fetch_all(&self.pool)
                .await?;
        let mut known = lock(&self.settings);
        if known.texts.len() + read.len() > KnownSettings::MOST {
            known.texts.clear();
        }
        known
            .texts
            .extend(read.into_iter().map(|(key, l, g)| (key, (l, g))));
        missing = known.fill(rows);
        match missing.first() {
            None => Ok(()),
            Some(&(_, id)) => Err(settings_not_stored(id)),
        }
    }
}
