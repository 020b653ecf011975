//! Cron schedules.

use async_trait::async_trait;

use super::PgStore;
use crate::store::model::{Fired, NewSchedule, Schedule};
use crate::store::rows::ScheduleRow;
use crate::store::{Result, ScheduleStore, StoreError};

#[async_trait]
impl ScheduleStore for PgStore {
    async fn add_schedule(&self, new: NewSchedule, now: i64) -> Result<Schedule> {
        let name = new.name;
        let row: ScheduleRow = sqlx::query_as(include_str!("schedules/insert.sql"))
            .bind(name.as_deref())
            .bind(&new.cron)
            .bind(new.target.to_string())
            .bind(new.next_run_at)
            .bind(now)
            .bind(new.tz.as_deref())
            .bind(new.overlap.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "a schedule named {:?} already exists",
                    name.as_deref().unwrap_or("")
                )),
                other => other,
            })?;
        row.into_schedule()
    }

    async fn schedule_fired(&self, id: i64, fired: Fired) -> Result<()> {
        let (job, run) = fired.job_and_run();
        sqlx::query(include_str!("schedules/fired.sql"))
            .bind(id)
            .bind(job)
            .bind(run)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn schedule_pending(&self, id: i64, tick: i64) -> Result<()> {
        sqlx::query(include_str!("schedules/pend.sql"))
            .bind(id)
            .bind(tick)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(include_str!("schedules/list.sql"))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(ScheduleRow::into_schedule).collect()
    }

    async fn delete_schedule(&self, key: &str) -> Result<bool> {
        let id: Option<i64> = key.parse().ok();
        let n = sqlx::query(include_str!("schedules/delete.sql"))
            .bind(id)
            .bind(key)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn take_due_schedules(
        &self,
        now: i64,
        next: for<'c> fn(&'c Schedule, i64) -> Option<i64>,
    ) -> Result<Vec<Schedule>> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<ScheduleRow> = sqlx::query_as(include_str!("schedules/due.sql"))
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let mut due = Vec::new();
        for row in rows {
            let s = row.into_schedule()?;
            let following = next(&s, now).unwrap_or(i64::MAX);
            sqlx::query(include_str!("schedules/advance.sql"))
                .bind(following)
                .bind(s.id)
                .execute(&mut *tx)
                .await?;
            due.push(s);
        }
        tx.commit().await?;
        Ok(due)
    }
}
