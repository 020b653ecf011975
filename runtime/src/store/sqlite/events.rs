//! Events out: webhooks, the outbox, deliveries and their calls.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::future::BoxFuture;
use rusqlite::params;

use super::{SqliteStore, rows, scalar};
use crate::store::events::*;
use crate::store::rows::{CallRow, DeliveryRow, DueDeliveryRow, OutboxRow, WebhookRow};
use crate::store::{Result, StoreError};

#[async_trait]
impl EventStore for SqliteStore {
    async fn create_webhook(&self, new: NewWebhook, now: i64) -> Result<Webhook> {
        let row: Option<WebhookRow> = self
            .write(|tx| {
                Ok(rows(
                    tx,
                    include_str!("events/insert_webhook.sql"),
                    params![
                        new.url,
                        events_column(&new.events),
                        new.module,
                        new.workflow,
                        new.queue,
                        new.description,
                        new.include_output,
                        new.secret,
                        now
                    ],
                )?
                .pop())
            })
            .await?;
        row.map(Webhook::from)
            .ok_or_else(|| StoreError::Corrupt("webhook insert returned nothing".into()))
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>> {
        let rows: Vec<WebhookRow> =
            self.read(|tx| rows(tx, include_str!("events/webhooks.sql"), []))?;
        Ok(rows.into_iter().map(Webhook::from).collect())
    }

    async fn webhook(&self, id: i64) -> Result<Option<Webhook>> {
        let mut rows: Vec<WebhookRow> =
            self.read(|tx| rows(tx, include_str!("events/webhook.sql"), [id]))?;
        Ok(rows.pop().map(Webhook::from))
    }

    async fn update_webhook(&self, w: &Webhook) -> Result<bool> {
        let n = self
            .write(|tx| {
                Ok(tx
                    .prepare_cached(include_str!("events/update_webhook.sql"))?
                    .execute(params![
                        w.id,
                        w.url,
                        events_column(&w.events),
                        w.description,
                        w.include_output,
                        w.enabled,
                        w.disabled_reason,
                        w.failing_since,
                        w.updated_at
                    ])?)
            })
            .await?;
        Ok(n > 0)
    }

    async fn delete_webhook(&self, id: i64) -> Result<bool> {
        let n = self
            .write(|tx| {
                tx.prepare_cached(include_str!("events/delete_calls_of.sql"))?
                    .execute([id])?;
                tx.prepare_cached(include_str!("events/delete_deliveries_of.sql"))?
                    .execute([id])?;
                Ok(tx
                    .prepare_cached(include_str!("events/delete_webhook.sql"))?
                    .execute([id])?)
            })
            .await?;
        Ok(n > 0)
    }

    async fn fan_out(&self, limit: u32, plan: &PlanDeliveries, now: i64) -> Result<usize> {
        self.write(|tx| {
            let events: Vec<OutboxRow> =
                rows(tx, include_str!("events/outbox_for_webhooks.sql"), [limit])?;
            if events.is_empty() {
                return Ok(0);
            }
            let events: Vec<OutboxEvent> = events.into_iter().map(OutboxEvent::from).collect();
            let webhooks: Vec<Webhook> =
                rows::<WebhookRow>(tx, include_str!("events/enabled_webhooks.sql"), [])?
                    .into_iter()
                    .map(Webhook::from)
                    .collect();
            let mut module_names = HashMap::new();
            for name in webhooks.iter().filter_map(|w| w.module.as_deref()) {
                if let Some(digest) =
                    scalar::<String>(tx, include_str!("events/module_digest.sql"), [name])?
                {
                    module_names.insert(name.to_string(), digest);
                }
            }
            let mut outputs = HashMap::new();
            if webhooks.iter().any(|w| w.include_output) {
                for e in events.iter().filter(|e| e.kind == "job") {
                    if let Some(out) =
                        scalar::<Vec<u8>>(tx, include_str!("events/job_output.sql"), [e.entity_id])?
                    {
                        outputs.insert(e.entity_id, out);
                    }
                }
            }
            let taken = FanOut {
                events,
                webhooks,
                module_names,
                outputs,
            };
            let mut insert = tx.prepare_cached(include_str!("events/insert_delivery.sql"))?;
            for d in plan(&taken) {
                insert.execute(params![
                    d.webhook_id,
                    d.event_id,
                    d.event_type,
                    d.payload,
                    now
                ])?;
            }
            let mut given = tx.prepare_cached(include_str!("events/given_to_webhooks.sql"))?;
            let mut done = tx.prepare_cached(include_str!("events/delete_done_outbox.sql"))?;
            for e in &taken.events {
                given.execute([e.id])?;
                done.execute([e.id])?;
            }
            Ok(taken.events.len())
        })
        .await
    }

    async fn take_deliveries(
        &self,
        limit: u32,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<DueDelivery>> {
        self.write(|tx| {
            let due: Vec<DueDeliveryRow> = rows(
                tx,
                include_str!("events/due_deliveries.sql"),
                params![now, limit],
            )?;
            let mut lease = tx.prepare_cached(include_str!("events/lease_delivery.sql"))?;
            let mut out = Vec::with_capacity(due.len());
            for d in due {
                let d = DueDelivery::from(d);
                lease.execute(params![d.id, now.saturating_add(lease_ms)])?;
                out.push(d);
            }
            Ok(out)
        })
        .await
    }

    async fn record_calls(&self, results: &[CallResult], now: i64) -> Result<()> {
        self.write(|tx| {
            let mut call = tx.prepare_cached(include_str!("events/insert_call.sql"))?;
            let mut after = tx.prepare_cached(include_str!("events/after_call.sql"))?;
            for r in results {
                let (state, next_at) = r.next.state_at(now);
                let c = &r.call;
                call.execute(params![
                    r.delivery,
                    c.n,
                    c.at,
                    c.status,
                    c.latency_ms,
                    c.error
                ])?;
                after.execute(params![r.delivery, state, c.n, next_at, now])?;
            }
            let mut webhook = tx.prepare_cached(include_str!("events/webhook_after_call.sql"))?;
            for (id, ok, disable) in webhooks_after(results) {
                webhook.execute(params![id, ok, now, disable])?;
            }
            Ok(())
        })
        .await
    }

    async fn deliveries(&self, webhook: i64, filter: &DeliveryFilter) -> Result<Vec<Delivery>> {
        self.read(|tx| {
            let found: Vec<DeliveryRow> = rows(
                tx,
                include_str!("events/deliveries.sql"),
                params![
                    webhook,
                    filter.state.map(DeliveryState::as_str),
                    filter.before,
                    filter.limit
                ],
            )?;
            let mut calls = Vec::new();
            for d in &found {
                calls.extend(rows::<CallRow>(
                    tx,
                    include_str!("events/calls.sql"),
                    [d.id()],
                )?);
            }
            crate::store::rows::deliveries_with_calls(found, calls)
        })
    }

    async fn redeliver(&self, webhook: i64, delivery: i64, now: i64) -> Result<Option<Delivery>> {
        self.write(|tx| {
            let Some(row) = rows::<DeliveryRow>(
                tx,
                include_str!("events/redeliver.sql"),
                params![webhook, delivery, now],
            )?
            .pop() else {
                return Ok(None);
            };
            let calls: Vec<CallRow> = rows(tx, include_str!("events/calls.sql"), [delivery])?;
            Ok(crate::store::rows::deliveries_with_calls(vec![row], calls)?.pop())
        })
        .await
    }

    async fn prune_deliveries(&self, before: i64) -> Result<u64> {
        self.write(|tx| {
            tx.prepare_cached(include_str!("events/prune_calls.sql"))?
                .execute([before])?;
            let n = tx
                .prepare_cached(include_str!("events/prune_deliveries.sql"))?
                .execute([before])?;
            Ok(n as u64)
        })
        .await
    }

    async fn drop_stale_sinks(&self, before: i64) -> Result<u64> {
        self.write(|tx| {
            let n = tx
                .prepare_cached(include_str!("events/drop_stale_sinks.sql"))?
                .execute([before])?;
            if n > 0 {
                tx.prepare_cached(include_str!("events/unsunk_outbox.sql"))?
                    .execute([])?;
                tx.prepare_cached(include_str!("events/delete_taken_outbox.sql"))?
                    .execute([])?;
            }
            Ok(n as u64)
        })
        .await
    }

    async fn sink_seen(&self, name: &str, now: i64) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(include_str!("events/add_sink.sql"))?
                .execute(params![name, now])?;
            Ok(())
        })
        .await
    }

    async fn publish_outbox(
        &self,
        limit: u32,
        publish: &mut (dyn FnMut(Vec<OutboxEvent>) -> BoxFuture<'static, Vec<i64>> + Send),
    ) -> Result<usize> {
        // Read, publish, then mark: the writer is not held across the calls. One publisher
        // per process (`crate::events`) keeps a job's events in order.
        let events: Vec<OutboxRow> =
            self.read(|tx| rows(tx, include_str!("events/outbox_for_nats.sql"), [limit]))?;
        if events.is_empty() {
            return Ok(0);
        }
        let published = publish(events.into_iter().map(OutboxEvent::from).collect()).await;
        let n = published.len();
        self.write(|tx| {
            let mut mark = tx.prepare_cached(include_str!("events/published.sql"))?;
            let mut done = tx.prepare_cached(include_str!("events/delete_done_outbox.sql"))?;
            for id in &published {
                mark.execute([id])?;
                done.execute([id])?;
            }
            Ok(())
        })
        .await?;
        Ok(n)
    }
}
