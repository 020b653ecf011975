//! Rows as both backends return them (the schemas use the same column types: 64-bit integers,
//! text, bytes, booleans) and their conversion into the model.

use super::lifecycle::{PendingEvent, pending};
use super::model::*;
use super::queues::{QueueInfo, QueueSettings, Rate};
use super::{Result, StoreError};

/// Reads a row from a rusqlite statement, by column name (the SQLite store).
pub(super) trait FromSqlite: Sized {
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

/// A pair of columns, by position (`RETURNING id, updated_at`).
impl<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql> FromSqlite for (A, B) {
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((row.get(0)?, row.get(1)?))
    }
}

/// A row struct both stores read: sqlx's `FromRow` (Postgres) and [`FromSqlite`].
macro_rules! row {
    // Read by Postgres by position, in the fields' order, without sqlx's check of each value's
    // type against the field's (for the rows read by the thousand: its cost per claimed job
    // showed in profiles). The statement must return the fields' columns first, in order:
    // debug builds (the tests) check the names.
    (by_position pub(super) struct $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        row!(@struct [] $name { $($field: $ty),* });

        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $name {
            fn from_row(row: &'r sqlx::postgres::PgRow) -> sqlx::Result<Self> {
                use sqlx::{Column as _, Row as _};
                debug_assert_eq!(
                    row.columns().iter().map(|c| c.name()).take([$(stringify!($field)),*].len()).collect::<Vec<_>>(),
                    [$(stringify!($field)),*],
                    "the columns of a {} by position",
                    stringify!($name)
                );
                let mut at = 0usize;
                let mut next = || {
                    at += 1;
                    at - 1
                };
                Ok($name { $($field: row.try_get_unchecked(next())?),* })
            }
        }
    };
    (pub(super) struct $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        row!(@struct [derive(sqlx::FromRow)] $name { $($field: $ty),* });
    };
    // The struct, with `$attr`, and its reading by SQLite (by column name).
    (@struct [$($attr:meta)*] $name:ident { $($field:ident: $ty:ty),* }) => {
        $(#[$attr])*
        pub(super) struct $name {
            $($field: $ty),*
        }

        impl FromSqlite for $name {
            fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok($name { $($field: row.get(stringify!($field))?),* })
            }
        }
    };
}

row! {
    pub(super) struct JobRow {
    id: i64,
    module_digest: String,
    state: String,
    priority: i64,
    run_at: i64,
    input: Vec<u8>,
    limits: Option<String>,
    retry: Option<String>,
    grants: Option<String>,
    idempotency_key: Option<String>,
    attempts: i64,
    lost_attempts: i64,
    deadline_at: Option<i64>,
    worker: Option<String>,
    lease_until: Option<i64>,
    cancel_requested: bool,
    outcome: Option<String>,
    output: Option<Vec<u8>>,
    error: Option<String>,
    workflow_ref: Option<String>,
    input_from: Option<i64>,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    queue: String,
    concurrency_key: Option<String>,
    concurrency_limit: Option<i64>,
    waits_on_key: bool,}
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(super) fn parse_outcome(s: Option<String>) -> Result<Option<wasmjobs_host::Outcome>> {
    s.map(|o| o.parse().map_err(|e| corrupt("outcome", e)))
        .transpose()
}

/// A job's limits, retry policy or grants from their JSON text; none when the job refers to
/// settings that are not stored.
fn policy_part<T: serde::de::DeserializeOwned>(text: Option<String>, what: &str) -> Result<T> {
    let text = text.ok_or_else(|| corrupt(what, "the job's settings are not stored"))?;
    serde_json::from_str(&text).map_err(|e| corrupt(what, e))
}

impl JobRow {
    pub(super) fn into_job(self) -> Result<Job> {
        Ok(Job {
            id: self.id,
            module: self.module_digest,
            state: self.state.parse().map_err(|e| corrupt("job state", e))?,
            queue: self.queue,
            priority: self.priority,
            run_at: self.run_at,
            input: self.input,
            limits: policy_part(self.limits, "limits")?,
            retry: policy_part(self.retry, "retry")?,
            grants: policy_part(self.grants, "grants")?,
            idempotency_key: self.idempotency_key,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            lost_attempts: u32::try_from(self.lost_attempts).unwrap_or(0),
            deadline_at: self.deadline_at,
            worker: self.worker,
            lease_until: self.lease_until,
            cancel_requested: self.cancel_requested,
            outcome: parse_outcome(self.outcome)?,
            output: self.output,
            error: self.error,
            workflow_ref: self.workflow_ref,
            input_from: self.input_from,
            concurrency: self.concurrency_key.map(|key| Concurrency {
                key,
                limit: self
                    .concurrency_limit
                    .and_then(|l| u32::try_from(l).ok())
                    .unwrap_or(1),
            }),
            waiting_for_key: self.waits_on_key,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }
}

// The columns a claim returns (`RETURNING` them, in this order: Postgres reads them by
// position): what an attempt needs and the claim order, not the whole job (decoding all of a
// job's columns, and parsing its retry policy, is a tenth of the node's CPU per trivial job),
// and the output of the job whose output is this job's input, so the attempt needs no read of
// its own. The job's settings come as their key, and their limits and grants either as texts
// (SQLite reads them beside the job) or as NULL, for the store to fill in from what it knows
// ([`ClaimRow::wants_settings`]: Postgres, which sends each text once per node).
row! {
    by_position pub(super) struct ClaimRow {
    id: i64,
    module_digest: String,
    priority: i64,
    run_at: i64,
    input: Vec<u8>,
    settings: Vec<u8>,
    limits: Option<String>,
    grants: Option<String>,
    attempts: i64,
    deadline_at: Option<i64>,
    input_from: Option<i64>,
    event_seq: i64,
    updated_at: i64,
    upstream_output: Option<Vec<u8>>,
    created_at: i64,
    queue: String,
    keyed: bool,}
}

/// The claimed attempts a claim returned, in claim order.
pub(super) fn claimed_in_order(mut rows: Vec<ClaimRow>) -> Result<Vec<Claimed>> {
    rows.sort_by_key(ClaimRow::claim_order);
    let mut parsed = Parsed::default();
    rows.into_iter()
        .map(|r| r.into_claimed(&mut parsed))
        .collect()
}

/// The limits and grants of the last row a claim decoded, with their text: jobs submitted
/// alike carry the same JSON, which is then parsed once per claim instead of once per job.
#[derive(Default)]
struct Parsed {
    limits: Option<(String, wasmjobs_host::Limits)>,
    grants: Option<(String, wasmjobs_host::Grants)>,
}

impl Parsed {
    fn limits(&mut self, text: String) -> Result<wasmjobs_host::Limits> {
        parse_once(&mut self.limits, text, "limits")
    }

    fn grants(&mut self, text: String) -> Result<wasmjobs_host::Grants> {
        parse_once(&mut self.grants, text, "grants")
    }
}

/// `text` parsed, or the value `last` holds when it was parsed from the same text.
fn parse_once<T: serde::de::DeserializeOwned + Clone>(
    last: &mut Option<(String, T)>,
    text: String,
    what: &str,
) -> Result<T> {
    if let Some((known, value)) = last
        && *known == text
    {
        return Ok(value.clone());
    }
    let value: T = serde_json::from_str(&text).map_err(|e| corrupt(what, e))?;
    *last = Some((text, value.clone()));
    Ok(value)
}

/// What a claim by `worker` returned, in claim order: the claimed attempts, their `running`
/// events (one per attempt, in the same order, at the attempt's start: the row's new
/// `updated_at`) and the notices to send once the claim commits. (Postgres writes the events in its
/// claim statement, and needs only [`claimed_in_order`].)
pub(super) fn claimed(
    mut rows: Vec<ClaimRow>,
    worker: &str,
) -> Result<(Vec<Claimed>, Vec<PendingEvent>, Vec<super::Notice>)> {
    rows.sort_by_key(ClaimRow::claim_order);
    let mut claimed = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    let mut notices = Vec::with_capacity(rows.len());
    let mut parsed = Parsed::default();
    for row in rows {
        let (seq, started) = (row.event_seq, row.updated_at);
        let c = row.into_claimed(&mut parsed)?;
        let e = NewEvent::state(
            JobState::Running,
            serde_json::json!({ "attempt": c.attempt, "worker": worker }),
        );
        events.extend(pending(c.id, seq, &[e], started));
        notices.push(super::Notice::Events(c.id));
        claimed.push(c);
    }
    Ok((claimed, events, notices))
}

impl ClaimRow {
    /// Claim order: priority (highest first), then run_at, then age. `RETURNING` does not keep
    /// the order of the subquery, so claims sort by this.
    fn claim_order(&self) -> (i64, i64, i64) {
        (-self.priority, self.run_at, self.id)
    }

    pub(super) fn id(&self) -> i64 {
        self.id
    }

    /// The key of this job's settings, when the claim did not read their texts.
    pub(super) fn wants_settings(&self) -> Option<&[u8]> {
        (self.limits.is_none() || self.grants.is_none()).then_some(&self.settings[..])
    }

    /// Gives this job its settings' limits and grants.
    pub(super) fn fill_settings(&mut self, limits: &str, grants: &str) {
        self.limits = Some(limits.to_string());
        self.grants = Some(grants.to_string());
    }

    fn into_claimed(self, parsed: &mut Parsed) -> Result<Claimed> {
        Ok(Claimed {
            id: self.id,
            module_digest: self.module_digest,
            queue: self.queue,
            // A job whose input is another job's output reads that output.
            input: match self.input_from {
                Some(_) => self.upstream_output.unwrap_or_default(),
                None => self.input,
            },
            limits: parsed.limits(
                self.limits
                    .ok_or_else(|| super::settings::settings_not_stored(self.id))?,
            )?,
            grants: parsed.grants(
                self.grants
                    .ok_or_else(|| super::settings::settings_not_stored(self.id))?,
            )?,
            attempt: u32::try_from(self.attempts).unwrap_or(0),
            deadline_at: self.deadline_at,
            input_from: self.input_from,
            ready_at: self.run_at,
            started_at: self.updated_at,
            created_at: self.created_at,
            keyed: self.keyed,
        })
    }
}

row! {
    pub(super) struct QueueRow {
    name: String,
    weight: i64,
    max_running: Option<i64>,
    rate: Option<String>,
    paused: bool,
    tokens: f64,
    tokens_at: i64,}
}

impl QueueRow {
    /// The queue's settings, and its token bucket refilled to `now` when it has a rate.
    pub(super) fn into_settings(self, now: i64) -> Result<(QueueSettings, Option<f64>)> {
        let rate = self
            .rate
            .map(|r| r.parse::<Rate>().map_err(|e| corrupt("queue rate", e)))
            .transpose()?;
        let tokens = rate.map(|r| r.refill(self.tokens, self.tokens_at, now));
        let settings = QueueSettings {
            name: self.name,
            weight: u32::try_from(self.weight).unwrap_or(1).max(1),
            max_running: self
                .max_running
                .map(|m| u32::try_from(m).unwrap_or(u32::MAX)),
            rate,
            paused: self.paused,
        };
        Ok((settings, tokens))
    }
}

/// [`QueueStore::queues`](super::QueueStore::queues) from the stored settings' rows and each
/// queue's unfinished jobs by state (`(queue, state, count)`): every queue that has either.
pub(super) fn queue_listing(
    stored: Vec<QueueRow>,
    counts: Vec<(String, String, i64)>,
) -> Result<Vec<QueueInfo>> {
    let mut by_name = std::collections::BTreeMap::new();
    for row in stored {
        let (settings, _) = row.into_settings(0)?;
        by_name.insert(settings.name.clone(), QueueInfo::new(settings));
    }
    for (queue, state, n) in counts {
        let info = by_name
            .entry(queue.clone())
            .or_insert_with(|| QueueInfo::new(QueueSettings::defaults(&queue)));
        let slot = match state.as_str() {
            "queued" => &mut info.queued,
            "scheduled" => &mut info.scheduled,
            "running" => &mut info.running,
            other => return Err(corrupt("queue count", format!("state {other:?}"))),
        };
        *slot += count(n);
    }
    Ok(by_name.into_values().collect())
}

row! {
    pub(super) struct EventRow {
    job_id: i64,
    seq: i64,
    kind: String,
    data: String,
    at: i64,}
}

impl EventRow {
    pub(super) fn into_event(self) -> Result<Event> {
        Ok(Event {
            job_id: self.job_id,
            seq: self.seq,
            kind: self.kind,
            data: serde_json::from_str(&self.data).map_err(|e| corrupt("event data", e))?,
            at: self.at,
        })
    }
}

row! {
    pub(super) struct ModuleRow {
    digest: String,
    size: i64,
    world: String,
    imports: String,
    created_at: i64,
    names: Option<String>,}
}

impl ModuleRow {
    pub(super) fn into_record(self) -> Result<ModuleRecord> {
        let mut names: Vec<String> = self
            .names
            .map(|n| {
                n.split('\n')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        Ok(ModuleRecord {
            digest: self.digest,
            size: u64::try_from(self.size).unwrap_or(0),
            world: self.world,
            imports: serde_json::from_str(&self.imports)
                .map_err(|e| corrupt("module imports", e))?,
            names,
            created_at: self.created_at,
        })
    }
}

row! {
    pub(super) struct ScheduleRow {
    id: i64,
    name: Option<String>,
    cron: String,
    target: String,
    next_run_at: i64,
    created_at: i64,
    tz: Option<String>,
    overlap: String,
    last_job: Option<i64>,
    pending_tick: Option<i64>,
    last_run: Option<i64>,}
}

impl ScheduleRow {
    pub(super) fn into_schedule(self) -> Result<Schedule> {
        Ok(Schedule {
            id: self.id,
            name: self.name,
            cron: self.cron,
            tz: self.tz,
            overlap: self
                .overlap
                .parse()
                .map_err(|e| corrupt("schedule overlap", e))?,
            last_job: self.last_job,
            last_run: self.last_run,
            pending_tick: self.pending_tick,
            target: serde_json::from_str(&self.target)
                .map_err(|e| corrupt("schedule target", e))?,
            next_run_at: self.next_run_at,
            created_at: self.created_at,
        })
    }
}

row! {
    pub(super) struct WorkflowRow {
    name: String,
    version: i64,
    definition: String,
    created_at: i64,}
}

impl WorkflowRow {
    pub(super) fn into_record(self) -> Result<WorkflowRecord> {
        Ok(WorkflowRecord {
            definition: serde_json::from_str(&self.definition)
                .map_err(|e| StoreError::Corrupt(format!("workflow {}: {e}", self.name)))?,
            name: self.name,
            version: self.version,
            created_at: self.created_at,
        })
    }
}

row! {
    pub(super) struct RunRow {
    id: i64,
    workflow: String,
    version: i64,
    state: String,
    input: Vec<u8>,
    error: Option<String>,
    cancel_requested: bool,
    deadline_at: Option<i64>,
    rev: i64,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,}
}

impl RunRow {
    pub(super) fn into_record(self) -> Result<RunRecord> {
        Ok(RunRecord {
            id: self.id,
            workflow: self.workflow,
            version: self.version,
            state: self.state.parse().map_err(|e| corrupt("run state", e))?,
            input: self.input,
            error: self.error,
            cancel_requested: self.cancel_requested,
            deadline_at: self.deadline_at,
            rev: self.rev,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }
}

row! {
    pub(super) struct NodeRow {
    node: String,
    module: String,
    state: String,
    job_id: Option<i64>,
    items_total: Option<i64>,
    items_next: i64,
    items_done: i64,
    items_failed: i64,
    output: Option<Vec<u8>>,
    error: Option<String>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    job_state: Option<String>,
    job_error: Option<String>,
    input: Option<Vec<u8>>,}
}

impl NodeRow {
    /// A `for_each` node that has elements.
    pub(super) fn fans_out(&self) -> bool {
        self.items_total.is_some_and(|t| t > 0)
    }

    pub(super) fn into_record(self) -> Result<NodeRecord> {
        Ok(NodeRecord {
            name: self.node,
            module: self.module,
            state: self.state.parse().map_err(|e| corrupt("node state", e))?,
            job_id: self.job_id,
            items_total: self.items_total,
            items_next: self.items_next,
            items_done: self.items_done,
            items_failed: self.items_failed,
            output: self.output,
            error: self.error,
            started_at: self.started_at,
            finished_at: self.finished_at,
            job_state: self
                .job_state
                .map(|s| s.parse().map_err(|e| corrupt("job state", e)))
                .transpose()?,
            job_error: self.job_error,
            input: self.input,
        })
    }
}

row! {
    pub(super) struct ItemRow {
    node: String,
    idx: i64,
    job_id: i64,
    job_state: String,
    job_error: Option<String>,}
}

impl ItemRow {
    pub(super) fn into_record(self) -> Result<ItemRecord> {
        Ok(ItemRecord {
            node: self.node,
            idx: self.idx,
            job_id: self.job_id,
            job_state: self
                .job_state
                .parse()
                .map_err(|e| corrupt("job state", e))?,
            job_error: self.job_error,
        })
    }
}

row! {
    pub(super) struct RunEventRow {
    run_id: i64,
    seq: i64,
    kind: String,
    data: String,
    at: i64,}
}

impl RunEventRow {
    pub(super) fn into_event(self) -> Result<RunEvent> {
        Ok(RunEvent {
            run_id: self.run_id,
            seq: self.seq,
            kind: self.kind,
            data: serde_json::from_str(&self.data).map_err(|e| corrupt("run event data", e))?,
            at: self.at,
        })
    }
}

/// A `COUNT` or a sum read back from the database (never negative).
fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// [`JobStore::count_unfinished`](super::JobStore::count_unfinished) from its row: scheduled,
/// queued, running.
pub(super) fn unfinished_counts(
    (scheduled, queued, running): (i64, i64, i64),
) -> [(JobState, u64); 3] {
    [
        (JobState::Scheduled, count(scheduled)),
        (JobState::Queued, count(queued)),
        (JobState::Running, count(running)),
    ]
}

/// [`WorkflowStore::count_active_runs`](super::WorkflowStore::count_active_runs) from its row:
/// running, cancelling.
pub(super) fn active_run_counts((running, cancelling): (i64, i64)) -> [(RunState, u64); 2] {
    [
        (RunState::Running, count(running)),
        (RunState::Cancelling, count(cancelling)),
    ]
}

/// [`Activity`] from its rows: (minute, succeeded, failed, cancelled) and (node, slots, busy,
/// seen_at).
pub(super) fn activity(
    minutes: Vec<(i64, i64, i64, i64)>,
    nodes: Vec<(String, i64, i64, i64)>,
) -> Activity {
    let n = count;
    Activity {
        minutes: minutes
            .into_iter()
            .map(|(minute, s, f, c)| MinuteEnds {
                minute,
                succeeded: n(s),
                failed: n(f),
                cancelled: n(c),
            })
            .collect(),
        nodes: nodes
            .into_iter()
            .map(|(node, slots, busy, seen_at)| NodeActivity {
                node,
                slots: n(slots),
                busy: n(busy),
                seen_at,
            })
            .collect(),
    }
}

row! {
    pub(super) struct WebhookRow {
    id: i64,
    url: String,
    events: String,
    module: Option<String>,
    workflow: Option<String>,
    queue: Option<String>,
    description: Option<String>,
    include_output: bool,
    secret: String,
    enabled: bool,
    disabled_reason: Option<String>,
    failing_since: Option<i64>,
    created_at: i64,
    updated_at: i64,}
}

impl From<WebhookRow> for super::events::Webhook {
    fn from(r: WebhookRow) -> Self {
        super::events::Webhook {
            id: r.id,
            url: r.url,
            events: super::events::events_from_column(&r.events),
            module: r.module,
            workflow: r.workflow,
            queue: r.queue,
            description: r.description,
            include_output: r.include_output,
            secret: r.secret,
            enabled: r.enabled,
            disabled_reason: r.disabled_reason,
            failing_since: r.failing_since,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

row! {
    pub(super) struct OutboxRow {
    id: i64,
    kind: String,
    entity_id: i64,
    state: String,
    module_digest: Option<String>,
    queue: Option<String>,
    workflow: Option<String>,
    run_id: Option<i64>,
    attempts: Option<i64>,
    outcome: Option<String>,
    error: Option<String>,
    created_at: i64,
    at: i64,}
}

impl From<OutboxRow> for super::events::OutboxEvent {
    fn from(r: OutboxRow) -> Self {
        super::events::OutboxEvent {
            id: r.id,
            kind: r.kind,
            entity_id: r.entity_id,
            state: r.state,
            module_digest: r.module_digest,
            queue: r.queue,
            workflow: r.workflow,
            run_id: r.run_id,
            attempts: r.attempts,
            outcome: r.outcome,
            error: r.error,
            created_at: r.created_at,
            at: r.at,
        }
    }
}

row! {
    pub(super) struct DeliveryRow {
    id: i64,
    webhook_id: i64,
    event_id: i64,
    event_type: String,
    state: String,
    attempts: i64,
    next_at: i64,
    created_at: i64,
    updated_at: i64,}
}

impl DeliveryRow {
    pub(super) fn id(&self) -> i64 {
        self.id
    }

    pub(super) fn into_delivery(
        self,
        calls: Vec<super::events::DeliveryCall>,
    ) -> Result<super::events::Delivery> {
        Ok(super::events::Delivery {
            id: self.id,
            webhook_id: self.webhook_id,
            event_id: self.event_id,
            event_type: self.event_type,
            state: self
                .state
                .parse()
                .map_err(|e| corrupt("delivery state", e))?,
            attempts: self.attempts,
            next_at: self.next_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            calls,
        })
    }
}

row! {
    pub(super) struct CallRow {
    delivery_id: i64,
    n: i64,
    at: i64,
    status: Option<i64>,
    latency_ms: i64,
    error: Option<String>,}
}

impl CallRow {
    pub(super) fn split(self) -> (i64, super::events::DeliveryCall) {
        (
            self.delivery_id,
            super::events::DeliveryCall {
                n: self.n,
                at: self.at,
                status: self.status,
                latency_ms: self.latency_ms,
                error: self.error,
            },
        )
    }
}

row! {
    pub(super) struct DueDeliveryRow {
    id: i64,
    webhook_id: i64,
    event_id: i64,
    payload: String,
    attempts: i64,
    since: i64,
    url: String,
    secret: String,
    failing_since: Option<i64>,}
}

impl From<DueDeliveryRow> for super::events::DueDelivery {
    fn from(r: DueDeliveryRow) -> Self {
        super::events::DueDelivery {
            id: r.id,
            webhook_id: r.webhook_id,
            event_id: r.event_id,
            payload: r.payload,
            attempts: r.attempts,
            since: r.since,
            url: r.url,
            secret: r.secret,
            failing_since: r.failing_since,
        }
    }
}

/// Groups calls by delivery, for [`DeliveryRow::into_delivery`].
pub(super) fn deliveries_with_calls(
    rows: Vec<DeliveryRow>,
    calls: Vec<CallRow>,
) -> Result<Vec<super::events::Delivery>> {
    let mut by = std::collections::HashMap::<i64, Vec<super::events::DeliveryCall>>::new();
    for c in calls {
        let (d, call) = c.split();
        by.entry(d).or_default().push(call);
    }
    rows.into_iter()
        .map(|r| {
            let mut calls = by.remove(&r.id).unwrap_or_default();
            calls.sort_by_key(|c| c.n);
            r.into_delivery(calls)
        })
        .collect()
}
