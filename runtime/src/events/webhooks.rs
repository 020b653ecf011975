//! Webhook deliveries: the loop that fans the outbox out and sends what is due, and one call
//! of a delivery ([`Sender::call`]) with what follows it (delivered, retried at a time, or
//! dead).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::{MAX_RETRY_DELAY, WebhookSettings, event_id, sign};
use crate::store::Store;
use crate::store::events::{AfterCall, CallResult, DeliveryCall, DueDelivery};
use crate::store::now_ms;

/// Calls made at once by one node.
const CONCURRENT_CALLS: usize = 32;
/// Due deliveries taken at once (their calls recorded together).
const TAKE_BATCH: u32 = 256;
/// Outbox events taken per fan-out transaction.
const FAN_OUT_BATCH: u32 = 500;
/// The most of a response's body that is read (then the connection is dropped).
const MAX_RESPONSE_BYTES: usize = 64 << 10;
/// How much of a failed response's body an attempt's error keeps.
const ERROR_BODY_CHARS: usize = 200;

/// The HTTP client of the deliveries: a timeout per call, no proxy, redirects followed only
/// to the same origin (at most 5), and a resolver that drops internal addresses unless they
/// are allowed ([`super::target::Guard`]).
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_internal: bool,
}

impl Sender {
    pub fn new(settings: &WebhookSettings) -> anyhow::Result<Sender> {
        let same_origin = reqwest::redirect::Policy::custom(|attempt| {
            let origin = |u: &reqwest::Url| {
                (
                    u.scheme().to_string(),
                    u.host_str().map(str::to_string),
                    u.port_or_known_default(),
                )
            };
            match attempt.previous().first() {
                Some(first)
                    if attempt.previous().len() <= 5 && origin(first) == origin(attempt.url()) =>
                {
                    attempt.follow()
                }
                _ => attempt.stop(),
            }
        });
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(same_origin)
            .no_proxy()
            .dns_resolver(Arc::new(super::target::Guard {
                allow_internal: settings.allow_private_targets,
            }))
            .user_agent(concat!("wasmjobs-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender {
            client,
            allow_internal: settings.allow_private_targets,
        })
    }

    /// Makes one call of `d` and says what follows.
    pub async fn call(&self, d: &DueDelivery, settings: &WebhookSettings) -> CallResult {
        let at = now_ms();
        let started = Instant::now();
        let outcome = self.send(d).await;
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let n = d.attempts + 1;
        let (status, error, retry, retry_after) = match outcome {
            Ok(s) if (200..300).contains(&s.status) => (Some(s.status), None, false, None),
            Ok(s) => {
                let retry = s.status == 408 || s.status == 429 || s.status >= 500;
                let mut why = format!("HTTP {}", s.status);
                if !s.body.is_empty() {
                    why.push_str(": ");
                    why.push_str(&s.body);
                }
                if !retry {
                    why.push_str(
                        " (not retried: only timeouts, connection errors, 408, 429 and 5xx are)",
                    );
                }
                (Some(s.status), Some(why), retry, s.retry_after)
            }
            Err(Failure::Refused(why)) => (None, Some(why), false, None),
            Err(Failure::Transport(why)) => (None, Some(why), true, None),
        };
        let call = DeliveryCall {
            n,
            at,
            status: status.map(i64::from),
            latency_ms,
            error: error.clone(),
        };
        let now = now_ms();
        let retry_for = millis(settings.retry_for);
        let next = if error.is_none() {
            AfterCall::Delivered
        } else if !retry {
            AfterCall::Dead
        } else {
            let wait = retry_after.unwrap_or_else(|| backoff(settings.retry_delay, n));
            let next_at = now.saturating_add(millis(wait.min(MAX_RETRY_DELAY)));
            if next_at > d.since.saturating_add(retry_for) {
                AfterCall::Dead
            } else {
                AfterCall::RetryAt(next_at)
            }
        };
        let disable = match (next, d.failing_since) {
            (AfterCall::Delivered, _) | (_, None) => None,
            (_, Some(since)) if now - since >= millis(settings.disable_after) => Some(format!(
                "every delivery failed for {} (since {}); last: {}",
                humantime::format_duration(Duration::from_secs(
                    u64::try_from((now - since) / 1000).unwrap_or(0)
                )),
                super::rfc3339(since),
                error.as_deref().unwrap_or("")
            )),
            _ => None,
        };
        CallResult {
            delivery: d.id,
            webhook: d.webhook_id,
            call,
            next,
            disable,
        }
    }

    async fn send(&self, d: &DueDelivery) -> Result<Response, Failure> {
        // The URL was checked when the webhook was written; a literal address is checked
        // again here (names are checked by the resolver, at each connection).
        let url =
            super::target::check_url(&d.url, self.allow_internal).map_err(Failure::Refused)?;
        let id = event_id(d.event_id);
        let timestamp = now_ms() / 1000;
        let signature = sign(&d.secret, &id, timestamp, d.payload.as_bytes())
            .map_err(|e| Failure::Refused(e.to_string()))?;
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.payload.clone())
            .send()
            .await
            .map_err(|e| Failure::Transport(describe(&e)))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        // Read at most MAX_RESPONSE_BYTES, keeping the start for the error.
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
                    body.extend_from_slice(&c[..c.len().min(room)]);
                    if body.len() >= MAX_RESPONSE_BYTES {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let body: String = String::from_utf8_lossy(&body)
            .chars()
            .take(ERROR_BODY_CHARS)
            .collect();
        Ok(Response {
            status,
            body: body.trim().to_string(),
            retry_after,
        })
    }
}

struct Response {
    status: u16,
    /// The start of its body.
    body: String,
    retry_after: Option<Duration>,
}

enum Failure {
    /// The call was not made, and would not be made later either.
    Refused(String),
    /// No response: a timeout, or a connection that failed.
    Transport(String),
}

/// What went wrong with a call, with its causes.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut out = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_redirect() {
        "redirected to another origin (not followed)".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let ms = when.timestamp_millis() - now_ms();
    Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// The wait before call `n + 1` after `n` failed: `first` doubled for each call after the
/// first, up to [`MAX_RETRY_DELAY`], then between 75 % and 125 % of that (jitter, so that the
/// retries of many deliveries do not fall together).
pub fn backoff(first: Duration, n: i64) -> Duration {
    let doublings = u32::try_from(n.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let base = first
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(MAX_RETRY_DELAY);
    base.mul_f64(0.75 + fastrand::f64() * 0.5)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The webhook loop of one node: fans the outbox out, sends what is due (at most
/// [`CONCURRENT_CALLS`] at once), records each call, and prunes old deliveries now and then,
/// until `stop`.
pub(super) async fn run(
    store: Arc<dyn Store>,
    settings: Arc<WebhookSettings>,
    sender: Sender,
    stop: CancellationToken,
) {
    let mut notices = store.subscribe();
    let lease = millis(settings.timeout) + 10_000;
    let mut last_prune: Option<Instant> = None;
    let plan = {
        let settings = settings.clone();
        move |fan: &crate::store::events::FanOut| super::plan(fan, &settings)
    };
    while !stop.is_cancelled() {
        let mut busy = false;
        match store.fan_out(FAN_OUT_BATCH, &plan, now_ms()).await {
            Ok(n) => busy |= n > 0,
            Err(e) => crate::throttle::warn(format!("webhooks: cannot read the outbox: {e}")),
        }
        let due = match store.take_deliveries(TAKE_BATCH, now_ms(), lease).await {
            Ok(d) => d,
            Err(e) => {
                crate::throttle::warn(format!("webhooks: cannot take deliveries: {e}"));
                Vec::new()
            }
        };
        busy |= !due.is_empty();
        let calls = futures::stream::iter(due)
            .map(|d| {
                let sender = sender.clone();
                let settings = settings.clone();
                async move {
                    let result = sender.call(&d, &settings).await;
                    crate::telemetry::webhook_call(match result.next {
                        AfterCall::Delivered => "delivered",
                        AfterCall::RetryAt(_) => "retry",
                        AfterCall::Dead => "dead",
                    });
                    result
                }
            })
            .buffer_unordered(CONCURRENT_CALLS)
            .collect::<Vec<CallResult>>();
        let results = tokio::select! {
            r = calls => r,
            () = stop.cancelled() => return,
        };
        if !results.is_empty()
            && let Err(e) = store.record_calls(&results, now_ms()).await
        {
            // The deliveries stay pending and are due again when their leases end.
            crate::throttle::warn(format!(
                "webhooks: cannot record {} calls: {e}",
                results.len()
            ));
        }
        if last_prune.is_none_or(|t| t.elapsed() >= super::PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            let before = now_ms() - millis(settings.keep_deliveries);
            if let Err(e) = store.prune_deliveries(before).await {
                crate::throttle::warn(format!("webhooks: cannot prune deliveries: {e}"));
            }
            match store
                .drop_stale_sinks(now_ms() - millis(super::SINK_EXPIRY))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    "dropped {n} event sink(s) no process had renewed for {}, with the events they had not published: is [events] nats configured on any node still?",
                    humantime::format_duration(super::SINK_EXPIRY)
                ),
                Err(e) => crate::throttle::warn(format!("events: cannot drop stale sinks: {e}")),
            }
        }
        if !busy {
            super::pause(&mut notices, &stop).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_an_hour() {
        let first = Duration::from_secs(5);
        for (n, base) in [(1, 5.0), (2, 10.0), (3, 20.0), (10, 2560.0), (40, 3600.0)] {
            let d = backoff(first, n).as_secs_f64();
            assert!(
                d >= base * 0.75 - 1e-9 && d <= base * 1.25 + 1e-9,
                "{n}: {d}"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
