//! Events out: webhooks, the outbox, deliveries and their calls. Several nodes take from the
//! outbox and the deliveries at once: each row is locked by the one that takes it, and the
//! others skip it.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::PgStore;
use crate::store::Result;
use crate::store::events::*;
use crate::store::rows::{CallRow, DeliveryRow, DueDeliveryRow, OutboxRow, WebhookRow};

#[async_trait]
impl EventStore for PgStore {
    async fn create_webhook(&self, new: NewWebhook, now: i64) -> Result<Webhook> {
        let row: WebhookRow = sqlx::query_as(include_str!("events/insert_webhook.sql"))
            .bind(&new.url)
            .bind(events_column(&new.events))
            .bind(&new.module)
            .bind(&new.workflow)
            .bind(&new.queue)
            .bind(&new.description)
            .bind(new.include_output)
            .bind(&new.secret)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.into())
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>> {
        let rows: Vec<WebhookRow> = sqlx::query_as(include_str!("events/webhooks.sql"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Webhook::from).collect())
    }

    async fn webhook(&self, id: i64) -> Result<Option<Webhook>> {
        let row: Option<WebhookRow> = sqlx::query_as(include_str!("events/webhook.sql"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(Webhook::from))
    }

    async fn update_webhook(&self, w: &Webhook) -> Result<bool> {
        let n = sqlx::query(include_str!("events/update_webhook.sql"))
            .bind(w.id)
            .bind(&w.url)
            .bind(events_column(&w.events))
            .bind(&w.description)
            .bind(w.include_output)
            .bind(w.enabled)
            .bind(&w.disabled_reason)
            .bind(w.failing_since)
            .bind(w.updated_at)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn delete_webhook(&self, id: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        for sql in [
            include_str!("events/delete_calls_of.sql"),
            include_str!("events/delete_deliveries_of.sql"),
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        let n = sqlx::query(include_str!("events/delete_webhook.sql"))
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn fan_out(&self, limit: u32, plan: &PlanDeliveries, now: i64) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let events: Vec<OutboxRow> = sqlx::query_as(include_str!("events/outbox_for_webhooks.sql"))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        if events.is_empty() {
            return Ok(0);
        }
        let events: Vec<OutboxEvent> = events.into_iter().map(OutboxEvent::from).collect();
        let webhooks: Vec<Webhook> =
            sqlx::query_as::<_, WebhookRow>(include_str!("events/enabled_webhooks.sql"))
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(Webhook::from)
                .collect();
        let mut module_names = HashMap::new();
        for name in webhooks.iter().filter_map(|w| w.module.as_deref()) {
            let digest: Option<String> =
                sqlx::query_scalar(include_str!("events/module_digest.sql"))
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(digest) = digest {
                module_names.insert(name.to_string(), digest);
            }
        }
        let mut outputs = HashMap::new();
        if webhooks.iter().any(|w| w.include_output) {
            let jobs: Vec<i64> = events
                .iter()
                .filter(|e| e.kind == "job")
                .map(|e| e.entity_id)
                .collect();
            let found: Vec<(i64, Vec<u8>)> = sqlx::query_as(include_str!("events/job_outputs.sql"))
                .bind(&jobs)
                .fetch_all(&mut *tx)
                .await?;
            outputs.extend(found);
        }
        let taken = FanOut {
            events,
            webhooks,
            module_names,
            outputs,
        };
        let planned = plan(&taken);
        let mut hooks = Vec::with_capacity(planned.len());
        let (mut events, mut types, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
        for d in planned {
            hooks.push(d.webhook_id);
            events.push(d.event_id);
            types.push(d.event_type);
            payloads.push(d.payload);
        }
        sqlx::query(include_str!("events/insert_deliveries.sql"))
            .bind(&hooks)
            .bind(&events)
            .bind(&types)
            .bind(&payloads)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let ids: Vec<i64> = taken.events.iter().map(|e| e.id).collect();
        sqlx::query(include_str!("events/given_to_webhooks.sql"))
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len())
    }

    async fn take_deliveries(
        &self,
        limit: u32,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<DueDelivery>> {
        let rows: Vec<DueDeliveryRow> = sqlx::query_as(include_str!("events/take_deliveries.sql"))
            .bind(now)
            .bind(i64::from(limit))
            .bind(now.saturating_add(lease_ms))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(DueDelivery::from).collect())
    }

    async fn record_calls(&self, results: &[CallResult], now: i64) -> Result<()> {
        let mut ids = Vec::with_capacity(results.len());
        let (mut n, mut at, mut status, mut latency, mut error) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut states, mut next) = (Vec::new(), Vec::new());
        for r in results {
            let (state, next_at) = r.next.state_at(now);
            ids.push(r.delivery);
            n.push(r.call.n);
            at.push(r.call.at);
            status.push(r.call.status);
            latency.push(r.call.latency_ms);
            error.push(r.call.error.clone());
            states.push(state);
            next.push(next_at);
        }
        let (mut hooks, mut ok, mut disable) = (Vec::new(), Vec::new(), Vec::new());
        for (w, o, d) in webhooks_after(results) {
            hooks.push(w);
            ok.push(o);
            disable.push(d);
        }
        sqlx::query(include_str!("events/record_calls.sql"))
            .bind(&ids)
            .bind(&n)
            .bind(&at)
            .bind(&status)
            .bind(&latency)
            .bind(&error)
            .bind(&states)
            .bind(&next)
            .bind(now)
            .bind(&hooks)
            .bind(&ok)
            .bind(&disable)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn deliveries(&self, webhook: i64, filter: &DeliveryFilter) -> Result<Vec<Delivery>> {
        let found: Vec<DeliveryRow> = sqlx::query_as(include_str!("events/deliveries.sql"))
            .bind(webhook)
            .bind(filter.state.map(DeliveryState::as_str))
            .bind(filter.before)
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        let ids: Vec<i64> = found.iter().map(DeliveryRow::id).collect();
        let calls: Vec<CallRow> = sqlx::query_as(include_str!("events/calls.sql"))
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
        crate::store::rows::deliveries_with_calls(found, calls)
    }

    async fn redeliver(&self, webhook: i64, delivery: i64, now: i64) -> Result<Option<Delivery>> {
        let row: Option<DeliveryRow> = sqlx::query_as(include_str!("events/redeliver.sql"))
            .bind(webhook)
            .bind(delivery)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let calls: Vec<CallRow> = sqlx::query_as(include_str!("events/calls.sql"))
            .bind(vec![delivery])
            .fetch_all(&self.pool)
            .await?;
        Ok(crate::store::rows::deliveries_with_calls(vec![row], calls)?.pop())
    }

    async fn prune_deliveries(&self, before: i64) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(include_str!("events/prune_deliveries.sql"))
            .bind(before)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn drop_stale_sinks(&self, before: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(include_str!("events/drop_stale_sinks.sql"))
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n > 0 {
            for sql in [
                include_str!("events/unsunk_outbox.sql"),
                include_str!("events/delete_taken_outbox.sql"),
            ] {
                sqlx::query(sql).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn sink_seen(&self, name: &str, now: i64) -> Result<()> {
        sqlx::query(include_str!("events/add_sink.sql"))
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn publish_outbox(
        &self,
        limit: u32,
        publish: &mut (dyn FnMut(Vec<OutboxEvent>) -> BoxFuture<'static, Vec<i64>> + Send),
    ) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let events: Vec<OutboxRow> = sqlx::query_as(include_str!("events/outbox_for_nats.sql"))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        if events.is_empty() {
            return Ok(0);
        }
        let published = publish(events.into_iter().map(OutboxEvent::from).collect()).await;
        sqlx::query(include_str!("events/published.sql"))
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(published.len())
    }
}
