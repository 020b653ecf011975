//! Cron schedules: parsing (the `croner` crate: standard 5-field expressions, or 6 with
//! seconds), and the loop that fires due schedules. Each tick submits exactly one job however
//! many nodes run: the store hands a due schedule to one node (row lock) and the job carries an
//! idempotency key naming the schedule and the tick.
//!
//! Ticks missed while every node was down are not replayed one by one: the first node up fires
//! the schedule once, then continues from the next tick after now.
//!
//! A schedule's `overlap` says what a tick does while the job of its last submission has not
//! ended: submit anyway (`allow`), nothing (`skip`), or keep the tick (the latest one) and
//! submit it once that job ended (`queue_one`).

use std::str::FromStr;
use std::time::Duration;

use chrono::TimeZone;
use croner::Cron;
use tokio_util::sync::CancellationToken;

use crate::service::{JobService, SubmitJob};
use crate::store::{Overlap, Schedule, now_ms};

/// Parses a cron expression, with a message naming it when it is not one.
pub fn parse(expr: &str) -> Result<Cron, String> {
    Cron::from_str(expr).map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

/// Parses an IANA time zone name (`Europe/Berlin`), with a message naming it when it is not
/// one.
pub fn parse_tz(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!("unknown time zone {name:?}: use an IANA name such as \"Europe/Berlin\" or \"UTC\"")
    })
}

/// The first tick of `expr` strictly after `after_ms`, in milliseconds: the expression read in
/// time zone `tz` (UTC if `None`), daylight saving included (croner: a tick in a skipped hour
/// fires once at the jump, a tick in a repeated hour fires once).
pub fn next_after(expr: &str, tz: Option<&str>, after_ms: i64) -> Option<i64> {
    let cron = parse(expr).ok()?;
    let zone = match tz {
        Some(name) => parse_tz(name).ok()?,
        None => chrono_tz::Tz::UTC,
    };
    // Ticks fall on whole seconds: search from the second `after_ms` falls in.
    let start = zone
        .timestamp_millis_opt(after_ms - after_ms.rem_euclid(1000))
        .single()?;
    cron.find_next_occurrence(&start, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The next `n` ticks of `s` after `after_ms`.
pub fn next_ticks(s: &Schedule, after_ms: i64, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    let mut at = after_ms;
    while out.len() < n {
        match next_after(&s.cron, s.tz.as_deref(), at) {
            Some(t) => {
                out.push(t);
                at = t;
            }
            None => break,
        }
    }
    out
}

/// A schedule's next tick after `after_ms` (what the store asks when it advances one).
fn next_tick(s: &Schedule, after_ms: i64) -> Option<i64> {
    next_after(&s.cron, s.tz.as_deref(), after_ms)
}

/// Fires due schedules once a second until shut down, and the ticks `queue_one` schedules
/// kept once their previous job ended.
pub(super) async fn fire(service: JobService, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let due = match service.store.take_due_schedules(now_ms(), next_tick).await {
            Ok(due) => due,
            Err(e) => {
                crate::throttle::warn(format!("cron: {e}"));
                continue;
            }
        };
        for schedule in due {
            let tick = schedule.next_run_at;
            if schedule.overlap != Overlap::Allow && previous_running(&service, &schedule).await {
                let job = schedule.last_job.unwrap_or_default();
                if schedule.overlap == Overlap::QueueOne {
                    tracing::info!(
                        schedule = schedule.id,
                        "schedule {}: job {job} of its previous tick is still going; this tick waits for it (queue_one)",
                        schedule.id
                    );
                    if let Err(e) = service.store.schedule_pending(schedule.id, tick).await {
                        tracing::error!("schedule {}: cannot keep its tick: {e}", schedule.id);
                    }
                } else {
                    tracing::info!(
                        schedule = schedule.id,
                        "schedule {}: job {job} of its previous tick is still going; this tick is skipped",
                        schedule.id
                    );
                }
                continue;
            }
            submit(&service, &schedule, tick).await;
        }
        // Ticks kept by `queue_one` whose previous job has ended now.
        let kept = match service.store.list_schedules().await {
            Ok(all) => all.into_iter().filter(|s| s.pending_tick.is_some()),
            Err(e) => {
                crate::throttle::warn(format!("cron: {e}"));
                continue;
            }
        };
        for schedule in kept.collect::<Vec<_>>() {
            if let Some(tick) = schedule.pending_tick
                && !previous_running(&service, &schedule).await
            {
                submit(&service, &schedule, tick).await;
            }
        }
    }
}

/// Whether the job of the schedule's last submission has not ended (a job no longer stored
/// has).
async fn previous_running(service: &JobService, schedule: &Schedule) -> bool {
    let Some(job) = schedule.last_job else {
        return false;
    };
    match service.store.get_job(job).await {
        Ok(Some(j)) => !j.state.is_final(),
        Ok(None) => false,
        // Unknown: do as if it ran, so `skip` and `queue_one` never double up.
        Err(e) => {
            crate::throttle::warn(format!("cron: cannot read job {job}: {e}"));
            true
        }
    }
}

/// Submits the job of `schedule`'s `tick` (once per tick: the job's key names them) and
/// records it as the schedule's last.
async fn submit(service: &JobService, schedule: &Schedule, tick: i64) {
    let mut req: SubmitJob = match serde_json::from_value(schedule.target.clone()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(
                "schedule {}: stored target is not a job submission: {e}",
                schedule.id
            );
            return;
        }
    };
    // The tick's key is in the server's own namespace: no client can take it first.
    req.idempotency_key = None;
    match service.submit_scheduled(req, schedule.id, tick).await {
        Ok((job, _)) => {
            if let Err(e) = service.store.schedule_fired(schedule.id, job.id).await {
                tracing::error!(
                    "schedule {}: cannot record its job {}: {e}",
                    schedule.id,
                    job.id
                );
            }
        }
        Err(e) => tracing::error!("schedule {} could not submit its job: {e}", schedule.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_tick() {
        // 2026-01-01T00:00:00Z
        let t0 = 1_767_225_600_000;
        assert_eq!(next_after("0 * * * *", None, t0), Some(t0 + 3_600_000));
        assert_eq!(next_after("*/5 * * * *", None, t0 + 1), Some(t0 + 300_000));
        assert!(
            parse("every tuesday")
                .unwrap_err()
                .contains("every tuesday")
        );
    }

    #[test]
    fn ticks_in_a_time_zone_follow_its_daylight_saving() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        let berlin = Some("Europe/Berlin");
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
        assert_eq!(
            next_after("0 9 * * *", berlin, at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T08:00:00Z"))
        );
        assert_eq!(
            next_after("0 9 * * *", berlin, at("2026-07-10T12:00:00Z")),
            Some(at("2026-07-11T07:00:00Z"))
        );
        // Across the spring change (29 March 2026): one tick a day, an hour earlier in UTC.
        let s = Schedule {
            id: 1,
            name: None,
            cron: "0 9 * * *".into(),
            tz: Some("Europe/Berlin".into()),
            overlap: Overlap::Allow,
            target: serde_json::json!({}),
            next_run_at: 0,
            created_at: 0,
            last_job: None,
            pending_tick: None,
        };
        assert_eq!(
            next_ticks(&s, at("2026-03-28T12:00:00Z"), 2),
            [at("2026-03-29T07:00:00Z"), at("2026-03-30T07:00:00Z")]
        );
        // 02:30 does not exist on that day in Berlin: it fires once, at the jump.
        let ticks = next_ticks(
            &Schedule {
                cron: "30 2 * * *".into(),
                ..s
            },
            at("2026-03-28T12:00:00Z"),
            2,
        );
        assert_eq!(ticks.len(), 2);
        assert!(ticks[0] < at("2026-03-29T02:00:00Z") && ticks[1] > at("2026-03-30T00:00:00Z"));
        assert!(
            parse_tz("Mars/Olympus")
                .unwrap_err()
                .contains("Mars/Olympus")
        );
    }
}
