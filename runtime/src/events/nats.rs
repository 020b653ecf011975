//! Every job's and run's state change published to NATS JetStream (`[events] nats`): on
//! subject `<prefix>.job.<state>` or `<prefix>.run.<state>`, with the webhooks' body (without
//! outputs) and `Nats-Msg-Id` set to the event's id, so that the stream drops a message
//! published again after a crash (within its duplicate window). Events are read from the
//! outbox in order and marked published only up to the first one JetStream did not
//! acknowledge, so one job's events reach the stream in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::{event_id, payload};
use crate::store::Store;
use crate::store::events::OutboxEvent;

/// `[events]`: where events are published.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// `nats://host:port`.
    pub url: String,
    /// Subjects start with it (default `wasmjobs`).
    pub subject_prefix: String,
    /// The stream that keeps the subjects, created when missing (default `WASMJOBS`).
    pub stream: String,
}

/// The JetStream the events go to.
#[derive(Clone)]
pub struct Publisher {
    js: async_nats::jetstream::Context,
    prefix: Arc<str>,
}

/// Events taken from the outbox per publishing transaction.
const BATCH: u32 = 512;
/// How long the stream remembers a message id to drop its duplicates.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

impl Publisher {
    /// Connects, and creates the stream for `<prefix>.>` if there is none by its name.
    pub async fn connect(s: &NatsSettings) -> anyhow::Result<Publisher> {
        let client = async_nats::ConnectOptions::new()
            .name("wasmjobs")
            .connect(s.url.as_str())
            .await
            .with_context(|| format!("cannot connect to NATS at {}", s.url))?;
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: s.stream.clone(),
            subjects: vec![format!("{}.>", s.subject_prefix)],
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "cannot find or create the JetStream stream {} on {}",
                s.stream, s.url
            )
        })?;
        Ok(Publisher {
            js,
            prefix: s.subject_prefix.as_str().into(),
        })
    }

    /// Publishes `events` in order; returns the ids of those acknowledged before the first
    /// that was not.
    async fn publish(&self, events: Vec<OutboxEvent>) -> Vec<i64> {
        let mut acks = Vec::with_capacity(events.len());
        for e in &events {
            let subject = format!("{}.{}.{}", self.prefix, e.kind, e.state);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id(e.id).as_str());
            // NATS messages carry no output.
            let body = payload(e, None, 0);
            match self
                .js
                .publish_with_headers(subject, headers, body.into())
                .await
            {
                Ok(ack) => acks.push((e.id, ack)),
                Err(err) => {
                    crate::throttle::warn(format!("NATS: cannot publish: {err}"));
                    break;
                }
            }
        }
        let mut done = Vec::with_capacity(acks.len());
        for (id, ack) in acks {
            match ack.await {
                Ok(_) => done.push(id),
                Err(err) => {
                    crate::throttle::warn(format!("NATS: a publish was not acknowledged: {err}"));
                    break;
                }
            }
        }
        done
    }
}

/// How often a publisher renews its sink in the store; a sink not renewed for
/// [`super::SINK_EXPIRY`] is dropped.
const RENEW_EVERY: Duration = Duration::from_secs(60);

/// Publishes the outbox until `stop`.
pub(super) async fn run(store: Arc<dyn Store>, publisher: Publisher, stop: CancellationToken) {
    let mut notices = store.subscribe();
    let mut renewed = std::time::Instant::now();
    while !stop.is_cancelled() {
        if renewed.elapsed() >= RENEW_EVERY {
            match store.sink_seen("nats", crate::store::now_ms()).await {
                Ok(()) => renewed = std::time::Instant::now(),
                Err(e) => crate::throttle::warn(format!("NATS: cannot renew the sink: {e}")),
            }
        }
        let mut publish = |events: Vec<OutboxEvent>| {
            let p = publisher.clone();
            let f: futures::future::BoxFuture<'static, Vec<i64>> =
                Box::pin(async move { p.publish(events).await });
            f
        };
        let published = tokio::select! {
            r = store.publish_outbox(BATCH, &mut publish) => r,
            () = stop.cancelled() => return,
        };
        match published {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(e) => crate::throttle::warn(format!("NATS: cannot read the outbox: {e}")),
        }
        super::pause(&mut notices, &stop).await;
    }
}
