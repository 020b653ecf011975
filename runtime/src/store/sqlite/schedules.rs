//! Cron schedules.

use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteStore, rows};
use crate::store::model::{Fired, NewSchedule, Schedule};
use crate::store::rows::ScheduleRow;
use crate::store::{Result, ScheduleStore, StoreError};

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn add_schedule(&self, new: NewSchedule, now: i64) -> Result<Schedule> {
        let name = new.name.clone();
        let row: Option<ScheduleRow> = self
            .write(|tx| {
                Ok(rows(
                    tx,
                    include_str!("schedules/insert.sql"),
                    params![
                        new.name,
                        new.cron,
                        new.target.to_string(),
                        new.next_run_at,
                        now,
                        new.tz,
                        new.overlap.as_str()
                    ],
                )?
                .pop())
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "a schedule named {:?} already exists",
                    name.as_deref().unwrap_or("")
                )),
                e => e,
            })?;
        row.ok_or_else(|| StoreError::Corrupt("schedule insert returned nothing".into()))?
            .into_schedule()
    }

    async fn schedule_fired(&self, id: i64, fired: Fired) -> Result<()> {
        let (job, run) = fired.job_and_run();
        self.write(|tx| {
            tx.prepare_cached(include_str!("schedules/fired.sql"))?
                .execute(params![id, job, run])?;
            Ok(())
        })
        .await
    }

    async fn schedule_pending(&self, id: i64, tick: i64) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(include_str!("schedules/pend.sql"))?
                .execute(params![id, tick])?;
            Ok(())
        })
        .await
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> =
            self.read(|tx| rows(tx, include_str!("schedules/list.sql"), []))?;
        rows.into_iter().map(ScheduleRow::into_schedule).collect()
    }

    async fn delete_schedule(&self, key: &str) -> Result<bool> {
        let id: Option<i64> = key.parse().ok();
        let n = self
            .write(|tx| {
                Ok(tx
                    .prepare_cached(include_str!("schedules/delete.sql"))?
                    .execute(params![id, key])?)
            })
            .await?;
        Ok(n > 0)
    }

    async fn take_due_schedules(
        &self,
        now: i64,
        next: for<'c> fn(&'c Schedule, i64) -> Option<i64>,
    ) -> Result<Vec<Schedule>> {
        self.write(|tx| {
            let rows: Vec<ScheduleRow> = rows(tx, include_str!("schedules/due.sql"), [now])?;
            let mut due = Vec::new();
            let mut advance = tx.prepare_cached(include_str!("schedules/advance.sql"))?;
            for row in rows {
                let s = row.into_schedule()?;
                let following = next(&s, now).unwrap_or(i64::MAX);
                advance.execute(params![following, s.id])?;
                due.push(s);
            }
            Ok(due)
        })
        .await
    }
}
