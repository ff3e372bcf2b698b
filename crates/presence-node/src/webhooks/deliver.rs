//! One endpoint's delivery from one shard of the lifecycle stream.
//!
//! The loop takes a batch (entries another node left idle first, then new
//! ones, up to `batch_max` or until `batch_wait` passed since the first),
//! POSTs it until the endpoint answers 2xx, and only then acknowledges it.
//! While it retries it keeps the entries claimed (their idle time reset), so
//! another node claims them only once this one has stopped (died): an event
//! is delivered at least once, never dropped with a node.

use std::sync::Arc;
use std::time::Duration;

use presence_core::lifecycle::filter_matches;
use presence_core::{Clock, LifecycleEvent, Millis};
use presence_store::{EventLog, StreamEntry};
use tokio::time::{sleep, Instant};

use super::{Endpoint, Settings};

/// How often an idle loop looks for new entries.
const POLL: Duration = Duration::from_millis(200);
/// The first retry's delay; each next one doubles, up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The delivery of one endpoint from one shard, by one node.
pub(super) struct Delivery {
    pub log: Arc<dyn EventLog>,
    pub clock: Arc<dyn Clock>,
    pub endpoint: Arc<Endpoint>,
    pub settings: Arc<Settings>,
    pub http: reqwest::Client,
    pub consumer: String,
    pub shard: u32,
}

/// The outcome of one POST.
enum Sent {
    Delivered,
    Failed(String),
}

impl Delivery {
    /// Runs until the task is aborted.
    pub async fn run(self) {
        let mut last_claim = Instant::now();
        loop {
            let batch = match self.next_batch(&mut last_claim).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(url = %self.endpoint.url, shard = self.shard, error = %e, "webhook: cannot read the lifecycle stream");
                    sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                sleep(POLL).await;
                continue;
            }
            self.deliver(batch).await;
        }
    }

    /// Entries left idle by a node that stopped, else new ones: up to
    /// `batch_max`, waiting up to `batch_wait` for more after the first.
    async fn next_batch(
        &self,
        last_claim: &mut Instant,
    ) -> Result<Vec<StreamEntry>, presence_store::StoreError> {
        let s = &self.settings;
        let (log, group, me) = (&self.log, &self.endpoint.group, &self.consumer);
        if last_claim.elapsed() >= s.claim_idle / 2 {
            *last_claim = Instant::now();
            let idle = s.claim_idle.as_millis() as Millis;
            let claimed = log
                .claim_idle(group, me, self.shard, idle, s.batch_max)
                .await?;
            if !claimed.is_empty() {
                tracing::info!(url = %self.endpoint.url, shard = self.shard, entries = claimed.len(), "webhook: took over entries another node left undelivered");
                return Ok(claimed);
            }
        }
        let mut batch = log.read_new(group, me, self.shard, s.batch_max).await?;
        if batch.is_empty() {
            return Ok(batch);
        }
        let until = Instant::now() + s.batch_wait;
        while batch.len() < s.batch_max && Instant::now() < until {
            sleep(POLL.min(until - Instant::now())).await;
            let more = log
                .read_new(group, me, self.shard, s.batch_max - batch.len())
                .await?;
            batch.extend(more);
        }
        Ok(batch)
    }

    /// Delivers a batch until it lands or its events are too old; then
    /// acknowledges every entry of it.
    async fn deliver(&self, batch: Vec<StreamEntry>) {
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        let mut events: Vec<LifecycleEvent> = batch
            .into_iter()
            .filter_map(|e| e.event)
            .filter(|e| filter_matches(&self.settings.events, e.kind.type_name()))
            .collect();
        let mut attempt = 0u32;
        loop {
            let now = self.clock.now_ms();
            let max_age = self.settings.max_age.as_millis() as Millis;
            let before = events.len();
            events.retain(|e| now - e.at <= max_age);
            let dropped = before - events.len();
            if dropped > 0 {
                crate::metrics::webhook_dropped(dropped as u64);
                tracing::error!(url = %self.endpoint.url, events = dropped, "webhook: events dropped after PRESENCE_WEBHOOK_MAX_AGE_S of failed deliveries");
            }
            if events.is_empty() {
                break;
            }
            match self.post(&events).await {
                Sent::Delivered => {
                    let now = self.clock.now_ms();
                    for e in &events {
                        crate::metrics::webhook_lag((now - e.at).max(0) as f64 / 1_000.0);
                    }
                    crate::metrics::webhook_delivered(events.len() as u64);
                    break;
                }
                Sent::Failed(why) => {
                    attempt += 1;
                    crate::metrics::webhook_retried();
                    let delay = backoff(attempt);
                    tracing::warn!(url = %self.endpoint.url, events = events.len(), attempt, retry_in_ms = delay.as_millis() as u64, error = %why, "webhook: delivery failed; retrying");
                    sleep(delay).await;
                    // Still this node's: nobody claims them while it retries.
                    if let Err(e) = self
                        .log
                        .touch(&self.endpoint.group, &self.consumer, self.shard, &ids)
                        .await
                    {
                        tracing::debug!(error = %e, "webhook: cannot keep the batch claimed");
                    }
                }
            }
        }
        if let Err(e) = self.log.ack(&self.endpoint.group, self.shard, &ids).await {
            // Delivered but not acknowledged: it will be delivered again
            // (receivers deduplicate by event id).
            tracing::warn!(url = %self.endpoint.url, error = %e, "webhook: cannot acknowledge a delivered batch");
        }
    }

    /// One signed POST of `{ "events": [...] }`.
    async fn post(&self, events: &[LifecycleEvent]) -> Sent {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            events: &'a [LifecycleEvent],
        }
        let body = match serde_json::to_vec(&Body { events }) {
            Ok(b) => b,
            Err(e) => return Sent::Failed(e.to_string()),
        };
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = self.settings.signer.header(t, &body);
        let sent = self
            .http
            .post(&self.endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Presence-Signature", signature)
            .header("Presence-Node", &self.consumer)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                crate::metrics::webhook_request("ok");
                Sent::Delivered
            }
            Ok(r) => {
                crate::metrics::webhook_request("status");
                Sent::Failed(format!("answered {}", r.status()))
            }
            Err(e) if e.is_timeout() => {
                crate::metrics::webhook_request("timeout");
                Sent::Failed(format!("timed out: {e}"))
            }
            Err(e) => {
                crate::metrics::webhook_request("error");
                Sent::Failed(e.to_string())
            }
        }
    }
}

/// The delay before retry `attempt` (1, 2, ...): exponential, capped, with
/// full jitter in its upper half so that nodes retrying at once spread out.
fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let d = exp.min(BACKOFF_MAX);
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for _ in 0..50 {
            let first = backoff(1);
            assert!(
                first >= BACKOFF_BASE / 2 && first <= BACKOFF_BASE,
                "{first:?}"
            );
            let fourth = backoff(4);
            assert!(
                fourth >= BACKOFF_BASE * 4 && fourth <= BACKOFF_BASE * 8,
                "{fourth:?}"
            );
            let late = backoff(40);
            assert!(late >= BACKOFF_MAX / 2 && late <= BACKOFF_MAX, "{late:?}");
        }
    }
}
