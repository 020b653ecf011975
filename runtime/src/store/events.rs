//! Events out, as the store keeps them (docs/events.md): webhooks, the outbox the triggers of
//! migration 0009 write in the transaction of each state change, the deliveries made from it
//! and their calls. What a delivery sends and when it is retried is decided outside the store
//! (`crate::events`); the store only keeps the rows and hands them out once each.

use std::collections::HashMap;

use serde::Serialize;

use super::{JobId, Result};

/// A webhook as stored. `events` are type patterns (`job.succeeded`, `job.*`, `run.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub module: Option<String>,
    pub workflow: Option<String>,
    pub queue: Option<String>,
    pub description: Option<String>,
    pub include_output: bool,
    /// The signing secret (`whsec_…`), shown to its creator once.
    pub secret: String,
    pub enabled: bool,
    /// Why it was disabled, when it was disabled for failing.
    pub disabled_reason: Option<String>,
    /// Its deliveries have failed since then, and none succeeded.
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A webhook to create (checked by the caller).
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
    pub module: Option<String>,
    pub workflow: Option<String>,
    pub queue: Option<String>,
    pub description: Option<String>,
    pub include_output: bool,
    pub secret: String,
}

/// How the stored `events` column holds the patterns: between commas, so that the triggers
/// find `,job.succeeded,` or `,job.*,` with a substring search.
pub(super) fn events_column(events: &[String]) -> String {
    format!(",{},", events.join(","))
}

pub(super) fn events_from_column(column: &str) -> Vec<String> {
    column
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// An event of the outbox: a job's or a run's new state, as it was in the transaction that
/// made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Never used twice: receivers dedupe on it (`webhook-id`, `Nats-Msg-Id`).
    pub id: i64,
    /// `job` or `run`.
    pub kind: String,
    /// The job's or the run's id.
    pub entity_id: i64,
    pub state: String,
    pub module_digest: Option<String>,
    pub queue: Option<String>,
    /// The workflow of the run (a run's own, or the run a job belongs to).
    pub workflow: Option<String>,
    /// The run: the run itself, or the run a job belongs to.
    pub run_id: Option<i64>,
    pub attempts: Option<i64>,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    /// When the change was made.
    pub at: i64,
}

impl OutboxEvent {
    /// Its type: `job.succeeded`, `run.failed`, ….
    pub fn event_type(&self) -> String {
        format!("{}.{}", self.kind, self.state)
    }
}

/// What turning outbox events into deliveries reads, in the same transaction.
#[derive(Debug)]
pub struct FanOut {
    pub events: Vec<OutboxEvent>,
    /// Every enabled webhook.
    pub webhooks: Vec<Webhook>,
    /// The digests the module names in the webhooks' filters point at.
    pub module_names: HashMap<String, String>,
    /// The outputs of the events' jobs that ended, when a webhook asks for outputs.
    pub outputs: HashMap<JobId, Vec<u8>>,
}

/// A delivery to make: one event for one webhook, its body fixed now.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub webhook_id: i64,
    pub event_id: i64,
    pub event_type: String,
    pub payload: String,
}

/// Decides the deliveries of a batch of events (shared by both stores: `crate::events`).
pub type PlanDeliveries = dyn Fn(&FanOut) -> Vec<NewDelivery> + Send + Sync;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet; due at `next_at`.
    Pending,
    Delivered,
    /// Its retry period ended without a success: only a redelivery by hand sends it again.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "dead" => Ok(DeliveryState::Dead),
            other => Err(format!(
                "unknown delivery state {other:?}: pending, delivered or dead"
            )),
        }
    }
}

/// A delivery with its calls.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: i64,
    pub event_id: i64,
    pub event_type: String,
    pub state: DeliveryState,
    pub attempts: i64,
    pub next_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub calls: Vec<DeliveryCall>,
}

/// One call of a delivery.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryCall {
    /// 1 for the first.
    pub n: i64,
    /// When it was made (ms since the epoch).
    pub at: i64,
    /// The response's status; none when no response came.
    pub status: Option<i64>,
    pub latency_ms: i64,
    /// What went wrong; none for a success.
    pub error: Option<String>,
}

/// A delivery a sender took, with what it needs to make the call.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: i64,
    pub webhook_id: i64,
    pub event_id: i64,
    pub payload: String,
    /// Calls made before this one.
    pub attempts: i64,
    /// When its retry period started.
    pub since: i64,
    pub url: String,
    pub secret: String,
    /// Its webhook's failing period's start, when it took the delivery.
    pub failing_since: Option<i64>,
}

/// What became of a call.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub delivery: i64,
    pub webhook: i64,
    pub call: DeliveryCall,
    pub next: AfterCall,
    /// Disable the webhook, for this reason (it has failed for too long).
    pub disable: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCall {
    Delivered,
    /// Failed; call again at this time.
    RetryAt(i64),
    /// Failed, and its retry period is over.
    Dead,
}

/// What a batch of calls does to each webhook: (webhook, whether a call succeeded, why to
/// disable it), in webhook order. A success ends the failing period; otherwise one starts.
pub(super) fn webhooks_after(results: &[CallResult]) -> Vec<(i64, bool, Option<String>)> {
    let mut by: std::collections::BTreeMap<i64, (bool, Option<String>)> = Default::default();
    for r in results {
        let e = by.entry(r.webhook).or_default();
        e.0 |= r.next == AfterCall::Delivered;
        if e.1.is_none() {
            e.1.clone_from(&r.disable);
        }
    }
    by.into_iter()
        .map(|(w, (ok, disable))| (w, ok, if ok { None } else { disable }))
        .collect()
}

impl AfterCall {
    /// The delivery's state and `next_at` after the call, made at `now`.
    pub(super) fn state_at(self, now: i64) -> (&'static str, i64) {
        match self {
            AfterCall::Delivered => (DeliveryState::Delivered.as_str(), now),
            AfterCall::RetryAt(at) => (DeliveryState::Pending.as_str(), at),
            AfterCall::Dead => (DeliveryState::Dead.as_str(), now),
        }
    }
}

/// Which deliveries a listing shows.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub state: Option<DeliveryState>,
    /// Only ids below this (the page before's last).
    pub before: Option<i64>,
    pub limit: u32,
}

/// A change of a webhook (`PATCH`): what is `Some` is set.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub include_output: Option<bool>,
    /// Enabling clears why it was disabled and its failing period.
    pub enabled: Option<bool>,
}

impl Webhook {
    /// Applies `patch` at `now`.
    pub fn patched(mut self, patch: WebhookPatch, now: i64) -> Webhook {
        if let Some(url) = patch.url {
            self.url = url;
        }
        if let Some(events) = patch.events {
            self.events = events;
        }
        if let Some(d) = patch.description {
            self.description = Some(d);
        }
        if let Some(o) = patch.include_output {
            self.include_output = o;
        }
        if let Some(enabled) = patch.enabled {
            if enabled && !self.enabled {
                self.disabled_reason = None;
                self.failing_since = None;
            }
            if !enabled && self.enabled {
                self.disabled_reason = None;
            }
            self.enabled = enabled;
        }
        self.updated_at = now;
        self
    }
}

/// The store's side of events out. Implemented by both backends.
#[async_trait::async_trait]
pub trait EventStore: Send + Sync + 'static {
    async fn create_webhook(&self, new: NewWebhook, now: i64) -> Result<Webhook>;
    async fn webhooks(&self) -> Result<Vec<Webhook>>;
    async fn webhook(&self, id: i64) -> Result<Option<Webhook>>;
    /// Writes every field of `webhook` (a webhook read and [`Webhook::patched`]). `false`
    /// if it no longer exists.
    async fn update_webhook(&self, webhook: &Webhook) -> Result<bool>;
    /// Deletes a webhook with its deliveries. `false` if there was none.
    async fn delete_webhook(&self, id: i64) -> Result<bool>;
    /// Takes up to `limit` outbox events not yet given to the webhooks, oldest first (each
    /// once, across every node), and stores the deliveries `plan` makes of them, in one
    /// transaction. Returns how many events it took.
    async fn fan_out(&self, limit: u32, plan: &PlanDeliveries, now: i64) -> Result<usize>;
    /// Takes up to `limit` pending deliveries due at `now` of enabled webhooks, each for one
    /// sender: their `next_at` moves to `now + lease_ms`, so that a sender that dies leaves
    /// them due again then.
    async fn take_deliveries(
        &self,
        limit: u32,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<DueDelivery>>;
    /// Records calls and what follows each (and disables their webhooks when told to), in
    /// one transaction.
    async fn record_calls(&self, results: &[CallResult], now: i64) -> Result<()>;
    /// A webhook's deliveries, newest first.
    async fn deliveries(&self, webhook: i64, filter: &DeliveryFilter) -> Result<Vec<Delivery>>;
    /// Sends delivery `delivery` of `webhook` again: pending, due now, with a new retry
    /// period. `None` if there is no such delivery.
    async fn redeliver(&self, webhook: i64, delivery: i64, now: i64) -> Result<Option<Delivery>>;
    /// Deletes the deliveries delivered or dead before `before`, with their calls.
    async fn prune_deliveries(&self, before: i64) -> Result<u64>;
    /// Registers a sink besides the webhooks (`nats`), or renews it: while it is registered
    /// every state change is written to the outbox for it.
    async fn sink_seen(&self, name: &str, now: i64) -> Result<()>;
    /// Drops the sinks not renewed since `before`, and what they had not taken from the
    /// outbox. Returns how many it dropped.
    async fn drop_stale_sinks(&self, before: i64) -> Result<u64>;
    /// Takes up to `limit` outbox events not yet published to NATS, in order, and calls
    /// `publish` with them; those it returns are marked published, in the same transaction,
    /// which holds the events against another publisher until it ends (so that the events
    /// of one job are published in order).
    async fn publish_outbox(
        &self,
        limit: u32,
        publish: &mut (
                 dyn FnMut(Vec<OutboxEvent>) -> futures::future::BoxFuture<'static, Vec<i64>> + Send
             ),
    ) -> Result<usize>;
}
