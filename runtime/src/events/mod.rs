//! Events out (docs/events.md): every job's and run's state change is written to the store's
//! outbox in the transaction that makes it (the triggers of migration 0009, while a webhook
//! wants it or a NATS publisher is registered), and a [`Dispatcher`] on each node takes it
//! from there: it turns outbox events into one delivery per matching webhook ([`plan`]), sends
//! the deliveries that are due ([`webhooks`]: signed per Standard Webhooks, retried with
//! backoff, dead after the retry period), and publishes the outbox to NATS JetStream when
//! configured ([`nats`]). A crash between a change and its call delays the call, never drops
//! it: the event waits in the outbox or as a pending delivery.

pub mod nats;
pub mod target;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::events::{FanOut, NewDelivery, OutboxEvent, Webhook};
use crate::store::{JobState, RunState, Store};

/// `[webhooks]`: how deliveries are made.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Let webhooks call private, loopback and link-local addresses.
    pub allow_private_targets: bool,
    /// Longest a call may take, response included.
    pub timeout: Duration,
    /// How long a delivery is retried before it is dead.
    pub retry_for: Duration,
    /// The first retry's delay; each next one doubles, up to [`MAX_RETRY_DELAY`].
    pub retry_delay: Duration,
    /// A webhook whose deliveries have all failed for this long is disabled.
    pub disable_after: Duration,
    /// The largest output put in a payload (for webhooks that ask for outputs).
    pub max_output_bytes: usize,
    /// How long delivered and dead deliveries are kept.
    pub keep_deliveries: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow_private_targets: false,
            timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(24 * 3600),
            retry_delay: Duration::from_secs(5),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            max_output_bytes: 64 << 10,
            keep_deliveries: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The longest wait between two calls of a delivery.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// The event types a webhook may ask for: `job.<state>`, `run.<state>`, and `job.*`,
/// `run.*` for all of a kind.
pub fn event_types() -> Vec<String> {
    let mut all: Vec<String> = vec!["job.*".into(), "run.*".into()];
    all.extend(JobState::ALL.iter().map(|s| format!("job.{s}")));
    all.extend(RunState::ALL.iter().map(|s| format!("run.{s}")));
    all
}

/// Checks a webhook's `events`: at least one, each a known type or wildcard; duplicates go.
pub fn check_events(events: &[String]) -> Result<Vec<String>, String> {
    if events.is_empty() {
        return Err(
            "events must name at least one event type, e.g. [\"job.succeeded\", \"run.*\"]".into(),
        );
    }
    let known = event_types();
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if !known.contains(e) {
            return Err(format!(
                "unknown event type {e:?}: expected one of {}",
                known.join(", ")
            ));
        }
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// A new signing secret: `whsec_` and 32 random bytes in base64 (Standard Webhooks).
pub fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// The `webhook-signature` of a call (Standard Webhooks, version 1): the HMAC-SHA256, keyed
/// with the secret's bytes (after `whsec_`, base64), of `{id}.{timestamp}.{body}`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> anyhow::Result<String> {
    use hmac::Mac as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| anyhow::anyhow!("a webhook's secret is not base64: {e}"))?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key)
        .map_err(|e| anyhow::anyhow!("a webhook's secret: {e}"))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// An event's id as receivers see it (`webhook-id`, `Nats-Msg-Id`): stable across retries,
/// redeliveries and republishing.
pub fn event_id(outbox_id: i64) -> String {
    format!("evt_{outbox_id}")
}

/// Whether webhook `w` wants event `e` (`module_names`: the digests its module filter's name
/// points at).
pub fn wants(w: &Webhook, e: &OutboxEvent, module_names: &HashMap<String, String>) -> bool {
    let ty = e.event_type();
    let wildcard = format!("{}.*", e.kind);
    if !w.events.iter().any(|p| *p == ty || *p == wildcard) {
        return false;
    }
    if let Some(q) = &w.queue
        && e.queue.as_ref() != Some(q)
    {
        return false;
    }
    if let Some(wf) = &w.workflow
        && e.workflow.as_ref() != Some(wf)
    {
        return false;
    }
    if let Some(m) = &w.module {
        let Some(digest) = &e.module_digest else {
            return false;
        };
        if digest != m && module_names.get(m) != Some(digest) {
            return false;
        }
    }
    true
}

/// The body of a delivery (Standard Webhooks' shape: `type`, `timestamp`, `data`).
#[derive(Serialize)]
struct Payload<'a> {
    /// `job.succeeded`, `run.failed`, ….
    #[serde(rename = "type")]
    event_type: String,
    /// The event's id, as in `webhook-id`.
    id: String,
    /// When the change was made (RFC 3339).
    timestamp: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    /// `job` or `run`.
    kind: &'a str,
    /// The job's or the run's id.
    id: i64,
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    module: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow: Option<&'a str>,
    /// The run: a run's own id, or the run a job belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    created_at: i64,
    /// When the change was made (ms since the epoch).
    at: i64,
    /// The job's output, for webhooks that ask: its JSON, or `output_base64` when it is not
    /// JSON; `output_omitted` says why it is missing when it is larger than the cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_omitted: Option<String>,
}

/// The deliveries of a batch of outbox events: one per event and webhook that wants it,
/// with its body.
pub fn plan(fan: &FanOut, settings: &WebhookSettings) -> Vec<NewDelivery> {
    let mut out = Vec::new();
    for e in &fan.events {
        let wanted: Vec<&Webhook> = fan
            .webhooks
            .iter()
            .filter(|w| wants(w, e, &fan.module_names))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let mut bodies: [Option<String>; 2] = [None, None];
        for w in wanted {
            let with_output = w.include_output && e.kind == "job";
            let body = bodies[usize::from(with_output)]
                .get_or_insert_with(|| {
                    payload(
                        e,
                        with_output.then(|| fan.outputs.get(&e.entity_id)),
                        settings.max_output_bytes,
                    )
                })
                .clone();
            out.push(NewDelivery {
                webhook_id: w.id,
                event_id: e.id,
                event_type: e.event_type(),
                payload: body,
            });
        }
    }
    out
}

/// An event's body; `output`: `Some` when the webhook asks for the job's output (`Some(None)`:
/// the job has none), which it carries up to `max_output_bytes`.
pub fn payload(
    e: &OutboxEvent,
    output: Option<Option<&Vec<u8>>>,
    max_output_bytes: usize,
) -> String {
    let mut data = Data {
        kind: &e.kind,
        id: e.entity_id,
        state: &e.state,
        module: e.module_digest.as_deref(),
        queue: e.queue.as_deref(),
        workflow: e.workflow.as_deref(),
        run: e.run_id,
        attempts: e.attempts,
        outcome: e.outcome.as_deref(),
        error: e.error.as_deref(),
        created_at: e.created_at,
        at: e.at,
        output: None,
        output_base64: None,
        output_omitted: None,
    };
    if let Some(Some(bytes)) = output {
        if bytes.len() > max_output_bytes {
            data.output_omitted = Some(format!(
                "the output is {} bytes, over the {max_output_bytes} bytes a payload carries ([webhooks] max_output_bytes)",
                bytes.len(),
            ));
        } else {
            match std::str::from_utf8(bytes)
                .ok()
                .and_then(|t| serde_json::value::RawValue::from_string(t.trim().to_string()).ok())
            {
                Some(json) => data.output = Some(json),
                None => {
                    data.output_base64 =
                        Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                }
            }
        }
    }
    let body = Payload {
        event_type: e.event_type(),
        id: event_id(e.id),
        timestamp: rfc3339(e.at),
        data,
    };
    serde_json::to_string(&body).unwrap_or_default()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How often the dispatcher looks for work when nothing wakes it.
const POLL: Duration = Duration::from_millis(200);
/// How often delivered and dead deliveries past their keeping, and sinks no publisher
/// renewed, are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// A sink (NATS) whose publishers have all been gone this long is dropped with the events it
/// had not published, so that an installation that stopped publishing does not keep every
/// state change for ever.
pub const SINK_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Runs events out on one node: fans the outbox out to the webhooks, sends the due
/// deliveries, and publishes to NATS when configured. Every node may run one (Postgres: each
/// event and each delivery is taken by one node).
pub struct Dispatcher {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Dispatcher {
    pub fn start(
        store: Arc<dyn Store>,
        settings: WebhookSettings,
        nats: Option<nats::Publisher>,
    ) -> anyhow::Result<Dispatcher> {
        let stop = CancellationToken::new();
        let sender = webhooks::Sender::new(&settings)?;
        let mut tasks = vec![tokio::spawn(webhooks::run(
            store.clone(),
            Arc::new(settings),
            sender,
            stop.clone(),
        ))];
        if let Some(publisher) = nats {
            tasks.push(tokio::spawn(nats::run(store, publisher, stop.clone())));
        }
        Ok(Dispatcher { stop, tasks })
    }

    /// Stops taking new work; what is being sent is abandoned (its delivery is due again when
    /// its lease ends).
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Waits for `POLL`, a notice that something ended, or the stop.
async fn pause(
    notices: &mut tokio::sync::broadcast::Receiver<crate::store::Notice>,
    stop: &CancellationToken,
) {
    use crate::store::Notice;
    let wait = async {
        loop {
            match notices.recv().await {
                Ok(Notice::Ended(_) | Notice::Run(_) | Notice::JobsAvailable) => return,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    tokio::select! {
        () = wait => tokio::time::sleep(Duration::from_millis(20)).await,
        () = tokio::time::sleep(POLL) => {}
        () = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, state: &str) -> OutboxEvent {
        OutboxEvent {
            id: 7,
            kind: kind.into(),
            entity_id: 42,
            state: state.into(),
            module_digest: (kind == "job").then(|| "sha256:abc".into()),
            queue: (kind == "job").then(|| "default".into()),
            workflow: Some("etl".into()),
            run_id: Some(3),
            attempts: Some(1),
            outcome: None,
            error: None,
            created_at: 1,
            at: 1_765_000_000_000,
        }
    }

    fn hook(events: &[&str]) -> Webhook {
        Webhook {
            id: 1,
            url: "https://example.com".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            module: None,
            workflow: None,
            queue: None,
            description: None,
            include_output: false,
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            enabled: true,
            disabled_reason: None,
            failing_since: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn webhooks_want_the_types_and_filters_they_name() {
        let names = HashMap::from([("hello".to_string(), "sha256:abc".to_string())]);
        let ok = event("job", "succeeded");
        assert!(wants(&hook(&["job.succeeded"]), &ok, &names));
        assert!(wants(&hook(&["job.*"]), &ok, &names));
        assert!(!wants(&hook(&["job.failed", "run.*"]), &ok, &names));
        assert!(wants(&hook(&["run.*"]), &event("run", "failed"), &names));
        let mut by_module = hook(&["job.*"]);
        by_module.module = Some("hello".into());
        assert!(wants(&by_module, &ok, &names));
        by_module.module = Some("other".into());
        assert!(!wants(&by_module, &ok, &names));
        by_module.module = Some("sha256:abc".into());
        assert!(wants(&by_module, &ok, &names));
        let mut by_queue = hook(&["job.*", "run.*"]);
        by_queue.queue = Some("bulk".into());
        assert!(!wants(&by_queue, &ok, &names));
        assert!(!wants(&by_queue, &event("run", "failed"), &names));
        let mut by_flow = hook(&["job.*"]);
        by_flow.workflow = Some("etl".into());
        assert!(wants(&by_flow, &ok, &names));
        by_flow.workflow = Some("other".into());
        assert!(!wants(&by_flow, &ok, &names));
    }

    #[test]
    fn event_patterns_are_checked() {
        assert_eq!(
            check_events(&[
                "job.succeeded".into(),
                "run.*".into(),
                "job.succeeded".into()
            ]),
            Ok(vec!["job.succeeded".to_string(), "run.*".to_string()])
        );
        for bad in ["job.done", "jobs.*", "*", ""] {
            let e = check_events(&[bad.into()]).expect_err(bad);
            assert!(
                e.contains("unknown event type") && e.contains("job.succeeded"),
                "{e}"
            );
        }
        assert!(check_events(&[]).is_err());
    }

    /// The Standard Webhooks specification's own example.
    #[test]
    fn signatures_follow_standard_webhooks() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .expect("signs");
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn payloads_carry_the_output_when_asked_and_small_enough() {
        let s = 16;
        let e = event("job", "succeeded");
        let plain: serde_json::Value = serde_json::from_str(&payload(&e, None, s)).expect("json");
        assert_eq!(plain["type"], "job.succeeded");
        assert_eq!(plain["id"], "evt_7");
        assert_eq!(plain["data"]["id"], 42);
        assert_eq!(plain["data"]["run"], 3);
        assert!(plain["data"].get("output").is_none());
        let out = br#"{"n": 1}"#.to_vec();
        let with: serde_json::Value =
            serde_json::from_str(&payload(&e, Some(Some(&out)), s)).expect("json");
        assert_eq!(with["data"]["output"]["n"], 1);
        let bin = vec![0xff, 0x00];
        let b: serde_json::Value =
            serde_json::from_str(&payload(&e, Some(Some(&bin)), s)).expect("json");
        assert_eq!(b["data"]["output_base64"], "/wA=");
        let big = vec![b'1'; 17];
        let o: serde_json::Value =
            serde_json::from_str(&payload(&e, Some(Some(&big)), s)).expect("json");
        assert!(o["data"].get("output").is_none());
        assert!(
            o["data"]["output_omitted"]
                .as_str()
                .is_some_and(|m| m.contains("max_output_bytes"))
        );
    }
}
