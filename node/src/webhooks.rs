//! Webhook delivery: the node that leads the Raft group POSTs what the webhook table says is owed,
//! signs it the fal way (gateway `webhook::message`, the cluster key from the replicated state),
//! and records every attempt through Raft: pending → attempts → delivered / failed.
//!
//! At least once: an attempt is recorded after the POST returns, so a crash in between sends it
//! again (receivers deduplicate on `request_id`, as fal asks of them). The leader delivers because
//! every node sees the same table: exactly one of them must act on it, and a new leader picks up
//! whatever the old one left pending.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runmesh_gateway_node::{webhook, ClusterKey};
use runmesh_proto::webhook::{AttemptOutcome, WebhookCommand};
use runmesh_proto::{Clock, Command, RequestId};
use runmesh_raft::JobLog;
use tokio::sync::{watch, Semaphore};

use crate::outbound::{self, FetchError, FetchPolicy, Outbound};

/// Delivery policy. fal: a 15 s timeout, 10 tries over about 2 hours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Attempts before a delivery is listed as failed.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each later one.
    pub backoff_base_ms: u64,
    /// Longest wait between two attempts.
    pub backoff_max_ms: u64,
    /// One attempt's time limit (connect, send, response headers).
    pub timeout_ms: u64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
}

pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// 15 s doubling over 9 retries is about 2 h 8 min, fal's "10 times in 2 hours".
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 15_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_base_ms: DEFAULT_BACKOFF_BASE_MS,
            backoff_max_ms: 3_600_000,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            concurrency: 16,
        }
    }
}

impl WebhookConfig {
    /// Wait after failed attempt number `attempt` (1-based).
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let shift = attempt.saturating_sub(1).min(32);
        self.backoff_base_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms.max(self.backoff_base_ms))
    }

    /// What a failed attempt leads to.
    pub fn after_failure(&self, attempt: u32, now_ms: u64, error: String) -> AttemptOutcome {
        if attempt >= self.max_attempts.max(1) {
            AttemptOutcome::GaveUp { error }
        } else {
            AttemptOutcome::Retry {
                next_attempt_ms: now_ms.saturating_add(self.backoff_ms(attempt)),
                error,
            }
        }
    }
}

/// Deliveries looked at per pass.
const DUE_PER_PASS: usize = 256;
/// Longest sleep between passes (a change notification or a stop wakes it earlier).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Runs until `stop` turns true.
pub async fn run(
    joblog: JobLog,
    clock: Arc<dyn Clock>,
    cfg: WebhookConfig,
    policy: FetchPolicy,
    mut stop: watch::Receiver<bool>,
) {
    // fal does not follow a receiver's redirects; neither does this client.
    let client = match Outbound::new(policy, Duration::from_millis(cfg.timeout_ms.max(1)), false) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client could not be built; webhooks stay pending");
            return;
        }
    };
    let in_flight: Arc<Mutex<HashSet<RequestId>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut changes = joblog.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        let now_ms = clock.now_ms();
        let mut wake = IDLE_WAKE;
        if joblog.leader() == Some(joblog.node_id()) {
            let (due, next_due) = joblog.read_state(|s| {
                let due: Vec<(RequestId, String, u32)> = s
                    .webhooks
                    .due(now_ms, DUE_PER_PASS)
                    .into_iter()
                    .map(|d| (d.request_id.clone(), d.url.clone(), d.attempts))
                    .collect();
                (due, s.webhooks.next_due_ms())
            });
            for (id, url, attempts) in due {
                {
                    let mut set = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                    if !set.insert(id.clone()) {
                        continue;
                    }
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let task = deliver(
                    joblog.clone(),
                    clock.clone(),
                    client.clone(),
                    cfg.clone(),
                    id.clone(),
                    url,
                    attempts + 1,
                );
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    task.await;
                    in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                });
            }
            if let Some(at) = next_due {
                wake = wake.min(Duration::from_millis(at.saturating_sub(now_ms).max(10)));
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            // A job finished (it may owe a webhook) or an attempt was recorded.
            _ = changes.recv() => {}
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// One attempt, recorded through Raft.
async fn deliver(
    joblog: JobLog,
    clock: Arc<dyn Clock>,
    client: Outbound,
    cfg: WebhookConfig,
    id: RequestId,
    url: String,
    attempt: u32,
) {
    let now_ms = clock.now_ms();
    let key = joblog.read_state(|s| s.keys.cluster_secret().map(ClusterKey::from_cluster_secret));
    let message = joblog.read(|t| t.get(&id).cloned());
    let outcome = match (key, message) {
        (None, _) => cfg.after_failure(attempt, now_ms, "cluster key not initialized".into()),
        (_, None) => AttemptOutcome::GaveUp {
            error: "the job is no longer in the table".into(),
        },
        (Some(key), Some(rec)) => match webhook::message(&key, &rec, now_ms / 1000) {
            None => AttemptOutcome::GaveUp {
                error: "the job has not finished".into(),
            },
            Some(msg) => match client.request(reqwest::Method::POST, &url) {
                // Accepted before the node's policy refused it (an older version, a narrower
                // --fetch-allow): never sent.
                Err(e) => AttemptOutcome::GaveUp {
                    error: e.to_string(),
                },
                Ok(mut req) => {
                    req = req.body(msg.body);
                    for (k, v) in &msg.headers {
                        req = req.header(*k, v);
                    }
                    match req.send().await.map_err(outbound::classify) {
                        Ok(resp) if resp.status().is_success() => AttemptOutcome::Delivered {
                            http_status: resp.status().as_u16(),
                        },
                        Ok(resp) => cfg.after_failure(
                            attempt,
                            clock.now_ms(),
                            format!("receiver answered HTTP {}", resp.status().as_u16()),
                        ),
                        // The host name resolved to refused addresses only.
                        Err(e @ FetchError::Refused(_)) => AttemptOutcome::GaveUp {
                            error: e.to_string(),
                        },
                        Err(e) => cfg.after_failure(attempt, clock.now_ms(), e.to_string()),
                    }
                }
            },
        },
    };
    match &outcome {
        AttemptOutcome::Delivered { http_status } => {
            tracing::info!(request_id = %id, attempt, http_status, "webhook delivered")
        }
        AttemptOutcome::Retry { error, .. } => {
            tracing::info!(request_id = %id, attempt, error = %error, "webhook failed; will retry")
        }
        AttemptOutcome::GaveUp { error } => {
            tracing::warn!(request_id = %id, attempt, error = %error, "webhook failed for good")
        }
    }
    let cmd = Command::Webhook(WebhookCommand::Attempted {
        request_id: id.clone(),
        attempt,
        now_ms: clock.now_ms(),
        outcome,
    });
    if let Err(e) = joblog.propose_command(cmd).await {
        // Not recorded: the delivery stays pending and is attempted again (at least once).
        tracing::warn!(request_id = %id, error = %e, "webhook attempt not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_gives_up_at_the_limit() {
        let cfg = WebhookConfig::default();
        assert_eq!(cfg.backoff_ms(1), 15_000);
        assert_eq!(cfg.backoff_ms(2), 30_000);
        assert_eq!(cfg.backoff_ms(40), 3_600_000);
        let total: u64 = (1..cfg.max_attempts).map(|a| cfg.backoff_ms(a)).sum();
        // fal: 10 tries over about 2 hours.
        assert!((6_000_000..=9_000_000).contains(&total), "{total}");
        assert!(matches!(
            cfg.after_failure(9, 0, "x".into()),
            AttemptOutcome::Retry { .. }
        ));
        assert!(matches!(
            cfg.after_failure(10, 0, "x".into()),
            AttemptOutcome::GaveUp { .. }
        ));
    }
}
