//! The queue as worker nodes drive it: claims, attempts' events and ends, leases, rescue.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use serde_json::json;

use super::jobs::{push_events, write_events};
use super::{SqliteStore, Tx, query, rows, scalar};
use crate::store::history;
use crate::store::lifecycle::{
    Ending, EndingSnapshot, PendingEvent, ending, pending, released_event,
};
use crate::store::model::*;
use crate::store::queues::{FairQueue, draw, earlier, fair_pick};
use crate::store::rows::{ClaimRow, QueueRow, claimed, queue_listing};
use crate::store::{
    Holding, Notice, QueueInfo, QueueSettings, QueueStore, Rescue, Result, StoreError,
};

/// The error of a job failed because its deadline passed before it could run.
pub(super) const DEADLINE_PASSED: &str = "the job's deadline passed before it could run";

#[async_trait]
impl QueueStore for SqliteStore {
    async fn claim(
        &self,
        worker: &str,
        limit: u32,
        holding: &Holding,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>> {
        let (claimed, notices, expired) = self
            .write(|tx| {
                let mut notices = Vec::new();
                // Jobs past their overall deadline never start, and scheduled jobs whose time
                // came are queued.
                let failed: Vec<(i64, i64, Option<String>, bool)> = query(
                    tx,
                    include_str!("queue/fail_past_deadline.sql"),
                    params![DEADLINE_PASSED, now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
                for (id, at, key, waited) in &failed {
                    let e = NewEvent::state(JobState::Failed, json!({ "error": DEADLINE_PASSED }));
                    push_events(tx, *id, &[e], *at)?;
                    notices.extend([Notice::Events(*id), Notice::Ended(*id)]);
                    // Its key's place (the job behind it in the key is queued before the
                    // claim below looks) or its wait for one.
                    if let Some(key) = key
                        && super::keys::ended(tx, *id, key, *waited)?
                    {
                        notices.push(Notice::JobsAvailable);
                    }
                }
                let queued: Vec<(i64, i64)> = rows(tx, include_str!("queue/queue_due.sql"), [now])?;
                for (id, at) in queued {
                    push_events(tx, id, &[NewEvent::state(JobState::Queued, json!({}))], at)?;
                    notices.push(Notice::Events(id));
                }
                let (ids, look_again) = choose(tx, limit, holding, now)?;
                self.next_token.set(look_again);
                if ids.is_empty() {
                    return Ok((Vec::new(), notices, failed));
                }
                let ids = serde_json::Value::from(ids).to_string();
                let rows: Vec<ClaimRow> = rows(
                    tx,
                    include_str!("queue/claim.sql"),
                    params![worker, now + lease_ms, now, ids],
                )?;
                let (claimed, events, claim_notices) = claimed(rows, worker)?;
                notices.extend(claim_notices);
                write_events(tx, &events)?;
                Ok((claimed, notices, failed))
            })
            .await?;
        for (id, ..) in expired {
            crate::telemetry::job_ended_waiting(id, JobState::Failed, DEADLINE_PASSED);
        }
        self.notify(notices);
        Ok(claimed)
    }

    async fn append_events(
        &self,
        id: JobId,
        worker: &str,
        attempt: u32,
        events: &[NewEvent],
        now: i64,
    ) -> Result<bool> {
        let held = self
            .write(|tx| {
                let holds: Option<i64> = scalar(
                    tx,
                    include_str!("queue/holds.sql"),
                    params![id, worker, i64::from(attempt)],
                )?;
                if holds.is_none() {
                    return Ok(false);
                }
                push_events(tx, id, events, now)?;
                Ok(true)
            })
            .await?;
        if held {
            self.notify([Notice::Events(id)]);
        }
        Ok(held)
    }

    async fn complete(&self, completions: &[Completion], now: i64) -> Result<Vec<Completed>> {
        let (results, notices) = self
            .write(|tx| {
                let mut notices = Vec::new();
                let mut events = Vec::new();
                let mut results = Vec::with_capacity(completions.len());
                for c in completions {
                    let (r, freed) = apply_completion(&mut events, tx, c, Some(&c.worker), now)?;
                    if let Completed::Applied(state) = r {
                        notices.push(Notice::Events(c.job_id));
                        if state.is_final() {
                            notices.push(Notice::Ended(c.job_id));
                        }
                        if state == JobState::Scheduled || freed {
                            notices.push(Notice::JobsAvailable);
                        }
                    }
                    results.push(r);
                }
                write_events(tx, &events)?;
                Ok((results, notices))
            })
            .await?;
        self.notify(notices);
        Ok(results)
    }

    async fn heartbeat(
        &self,
        worker: &str,
        jobs: &[JobId],
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<(JobId, bool)>> {
        let ids = serde_json::Value::from(jobs).to_string();
        self.write(|tx| {
            query(
                tx,
                include_str!("queue/heartbeat.sql"),
                params![now + lease_ms, ids, worker],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
    }

    async fn rescue(&self, which: Rescue<'_>, now: i64) -> Result<Vec<JobId>> {
        let rescued = self
            .write(|tx| {
                let read = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
                let running: Vec<(i64, i64, Option<String>)> = match which {
                    Rescue::Expired { keep } => {
                        query(tx, include_str!("queue/expired.sql"), [now], read)?
                            .into_iter()
                            .filter(|(id, _, _)| !keep.contains(id))
                            .collect()
                    }
                    Rescue::Workers(workers) => {
                        let mut all = Vec::new();
                        for w in workers {
                            let sql = include_str!("queue/running_of_worker.sql");
                            all.extend(query(tx, sql, [w], read)?);
                        }
                        all
                    }
                };
                let mut rescued = Vec::new();
                let mut events = Vec::new();
                for (id, attempts, worker) in running {
                    let c = Completion::lost(id, attempts, worker);
                    if let (Completed::Applied(_), _) =
                        apply_completion(&mut events, tx, &c, None, now)?
                    {
                        rescued.push(id);
                    }
                }
                write_events(tx, &events)?;
                Ok(rescued)
            })
            .await?;
        // A rescued job may have ended (failed, no attempts left): followers of ends look.
        let mut notices: Vec<Notice> = rescued
            .iter()
            .flat_map(|id| [Notice::Events(*id), Notice::Ended(*id)])
            .collect();
        notices.push(Notice::JobsAvailable);
        self.notify(notices);
        Ok(rescued)
    }

    async fn running_workers(&self) -> Result<Vec<String>> {
        self.read(|tx| {
            query(tx, include_str!("queue/running_workers.sql"), [], |r| {
                r.get(0)
            })
        })
    }

    async fn release(&self, worker: &str, jobs: &[(JobId, u32)], now: i64) -> Result<Vec<JobId>> {
        let released = self
            .write(|tx| {
                let mut released = Vec::new();
                for &(id, attempt) in jobs {
                    let seq: Option<i64> = scalar(
                        tx,
                        include_str!("queue/release.sql"),
                        params![now, id, worker, i64::from(attempt)],
                    )?;
                    let Some(seq) = seq else { continue };
                    let event = released_event(worker);
                    write_events(tx, &pending(id, seq, std::slice::from_ref(&event), now))?;
                    released.push(id);
                }
                Ok(released)
            })
            .await?;
        let mut notices: Vec<Notice> = released.iter().map(|id| Notice::Events(*id)).collect();
        if !released.is_empty() {
            notices.push(Notice::JobsAvailable);
        }
        self.notify(notices);
        Ok(released)
    }

    async fn probe_write(&self, node: &str, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(include_str!("queue/probe_write.sql"))?
                .execute(params![node, now])?;
            Ok(())
        })
        .await
    }

    async fn report_activity(&self, report: &ActivityReport, now: i64) -> Result<()> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.write(|tx| {
            tx.prepare_cached(include_str!("queue/report_node.sql"))?
                .execute(params![report.node, now, n(report.slots), n(report.busy)])?;
            let mut add = tx.prepare_cached(include_str!("queue/add_minute.sql"))?;
            for m in &report.minutes {
                add.execute(params![
                    report.node,
                    m.minute,
                    n(m.succeeded),
                    n(m.failed),
                    n(m.cancelled)
                ])?;
            }
            tx.prepare_cached(include_str!("queue/forget_minutes.sql"))?
                .execute([now - crate::store::ACTIVITY_KEPT_MS])?;
            Ok(())
        })
        .await
    }

    async fn configure_queues(&self, queues: &[QueueSettings], now: i64) -> Result<()> {
        self.write(|tx| {
            let mut upsert = tx.prepare_cached(include_str!("queue/configure_queue.sql"))?;
            for q in queues {
                upsert.execute(params![
                    q.name,
                    i64::from(q.weight),
                    q.max_running.map(i64::from),
                    q.rate.map(|r| r.to_string()),
                    q.paused,
                    q.rate.map_or(0.0, |r| r.burst()),
                    now
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>> {
        self.read(|tx| {
            let stored: Vec<QueueRow> = rows(tx, include_str!("queue/queue_settings.sql"), [])?;
            let counts = query(tx, include_str!("queue/queue_counts.sql"), [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            queue_listing(stored, counts)
        })
    }

    async fn set_queue_paused(
        &self,
        name: &str,
        paused: bool,
        now: i64,
    ) -> Result<Option<QueueInfo>> {
        let Some(mut info) = self
            .queues()
            .await?
            .into_iter()
            .find(|q| q.settings.name == name)
        else {
            return Ok(None);
        };
        self.write(|tx| {
            tx.prepare_cached(include_str!("queue/pause_queue.sql"))?
                .execute(params![name, paused, now])?;
            Ok(())
        })
        .await?;
        if !paused {
            // Claims that found nothing they could take look again.
            self.notify([Notice::JobsAvailable]);
        }
        info.settings.paused = paused;
        Ok(Some(info))
    }

    async fn next_scheduled_at(&self) -> Result<Option<i64>> {
        self.read(|tx| {
            let next = scalar::<Option<i64>>(tx, include_str!("queue/next_scheduled_at.sql"), [])?
                .flatten();
            Ok(self.next_token.earliest(next))
        })
    }
}

/// The jobs a claim of up to `limit` takes, in the order [`fair_pick`] picks them: from the
/// queues with queued jobs, each within its room ([`QueueSettings::room`]), whose token
/// buckets it draws from here (the transaction holds the one writer's lock, so no other claim
/// sees the bucket in between).
/// Also returns when to look again for jobs a rate held back ([`NextToken`]).
fn choose(tx: &Tx<'_>, limit: u32, holding: &Holding, now: i64) -> Result<(Vec<i64>, Option<i64>)> {
    let ready: Vec<String> = query(tx, include_str!("queue/ready_queues.sql"), [], |r| r.get(0))?;
    if ready.is_empty() {
        return Ok((Vec::new(), None));
    }
    let stored: Vec<QueueRow> = rows(tx, include_str!("queue/queue_settings.sql"), [])?;
    let mut settings = std::collections::HashMap::new();
    for row in stored {
        let (s, tokens) = row.into_settings(now)?;
        settings.insert(s.name.clone(), (s, tokens));
    }
    let limited = ready.iter().any(|q| {
        settings
            .get(q)
            .is_some_and(|(s, _)| s.max_running.is_some())
    });
    let running: std::collections::HashMap<String, u64> = if limited {
        query(tx, include_str!("queue/running_by_queue.sql"), [], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .into_iter()
        .collect()
    } else {
        Default::default()
    };
    let mut queues = Vec::with_capacity(ready.len());
    let mut rooms = Vec::with_capacity(ready.len());
    for name in &ready {
        let mine = holding.room_of(name, limit);
        let (weight, room) = match settings.get(name) {
            Some((s, tokens)) => (
                s.weight,
                s.room(mine, running.get(name).copied().unwrap_or(0), *tokens),
            ),
            None => (1, mine),
        };
        // A queue with no room stays in: its bucket is still drawn (and looked at again).
        let candidates: Vec<i64> = if room == 0 {
            Vec::new()
        } else {
            query(
                tx,
                include_str!("queue/candidates.sql"),
                params![name, i64::from(room)],
                |r| r.get(0),
            )?
        };
        queues.push(FairQueue {
            name,
            weight,
            held: holding.held_of(name),
            candidates,
        });
        rooms.push(room);
    }
    let picked = fair_pick(&queues, limit as usize);
    // Draw the rate-limited queues' tokens for what was picked of them.
    let mut look_again = None;
    for (i, q) in queues.iter().enumerate() {
        let Some((s, Some(tokens))) = settings.get(q.name) else {
            continue;
        };
        let taken = picked.iter().filter(|(from, _)| *from == i).count();
        let (left, again) = draw(s, *tokens, rooms[i], taken, now);
        tx.prepare_cached(include_str!("queue/take_tokens.sql"))?
            .execute(params![q.name, left, now])?;
        look_again = earlier(look_again, again);
    }
    Ok((picked.into_iter().map(|(_, id)| id).collect(), look_again))
}

/// Applies the end of an attempt: `fence` is the worker that must still hold it (`None` for the
/// rescuer, which acts on expired leases). Also returns whether the end let a job that waited
/// for a place of its concurrency key into the queue.
fn apply_completion(
    events_out: &mut Vec<PendingEvent>,
    tx: &Tx<'_>,
    c: &Completion,
    fence: Option<&str>,
    now: i64,
) -> Result<(Completed, bool)> {
    let snap = tx
        .prepare_cached(include_str!("queue/attempt_snapshot.sql"))?
        .query_row(params![c.job_id, i64::from(c.attempt), fence], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })
        .optional()?;
    let Some((attempts, retry, cancel_requested, deadline_at, last, lost_attempts, started, key)) =
        snap
    else {
        return Ok((Completed::Refused, false));
    };
    // Never before the job's last transition: `now` is the completing node's clock reading,
    // which may be a little behind the claim's (see `claimed`).
    let now = now.max(last);
    let Ending {
        state,
        run_at,
        finished_at,
        keep_output,
        state_data,
    } = ending(
        EndingSnapshot {
            attempts,
            lost_attempts,
            retry: &retry,
            cancel_requested,
            deadline_at,
        },
        c,
        now,
    )?;
    let last_seq: i64 = scalar(
        tx,
        include_str!("queue/end_attempt.sql"),
        params![
            state.as_str(),
            c.outcome.as_str(),
            c.error,
            keep_output.then_some(c.output.as_slice()),
            run_at,
            finished_at,
            now,
            c.events.len() as i64 + 1,
            i64::from(c.outcome == wasmjobs_host::Outcome::Lost),
            history::attempt_line(c, started.unwrap_or(now), now),
            c.job_id
        ],
    )?
    .ok_or_else(|| StoreError::Corrupt(format!("job {} vanished while completing it", c.job_id)))?;
    // The attempt's own events, then the state event, last.
    events_out.extend(pending(c.job_id, last_seq - 1, &c.events, now));
    events_out.push((c.job_id, last_seq, "state", state_data, now));
    // An end frees the job's place of its key (a retry keeps it).
    let freed = match key {
        Some(key) if state.is_final() => super::keys::release(tx, &key)?,
        _ => false,
    };
    Ok((Completed::Applied(state), freed))
}
