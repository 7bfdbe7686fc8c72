//! The webhook table: one delivery per job that asked for a `fal_webhook`, from "owed" through its
//! attempts to delivered or failed. Deliveries are created by [`crate::ClusterState`] when such a
//! job reaches a terminal state, so "job finished" and "webhook owed" commit together.

use std::collections::{BTreeMap, BTreeSet};

use runmesh_proto::webhook::{AttemptOutcome, WebhookCommand, WebhookResult};
use runmesh_proto::{codec, ProtoError, RequestId};
use serde::{Deserialize, Serialize};

/// Delivered records kept (oldest dropped first): they only answer "was it delivered".
pub const DELIVERED_KEPT_MAX: usize = 10_000;
/// Failed records kept for the admin list (oldest dropped first).
pub const FAILED_KEPT_MAX: usize = 10_000;
/// Longest error text stored per delivery.
pub const ERROR_LEN_MAX: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    /// Owed; the next attempt is due at `next_attempt_ms`.
    Pending {
        next_attempt_ms: u64,
    },
    Delivered {
        at_ms: u64,
        http_status: u16,
    },
    /// Past the retry limit.
    Failed {
        at_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub request_id: RequestId,
    pub url: String,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// When the job ended (the delivery was created).
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TableData {
    deliveries: Vec<Delivery>,
}

/// Deliveries with derived indexes (a snapshot holds the records alone).
#[derive(Clone, Debug, Default)]
pub struct WebhookTable {
    deliveries: BTreeMap<RequestId, Delivery>,
    /// Pending deliveries by due time.
    due: BTreeSet<(u64, RequestId)>,
    /// Finished deliveries in the order they finished, for trimming.
    delivered: BTreeSet<(u64, RequestId)>,
    failed: BTreeSet<(u64, RequestId)>,
}

impl WebhookTable {
    /// A job ended at `now_ms` and wants `url` called: create its delivery, due now. A second call
    /// for the same job changes nothing.
    pub fn enqueue(&mut self, request_id: RequestId, url: String, now_ms: u64) -> bool {
        if self.deliveries.contains_key(&request_id) {
            return false;
        }
        self.due.insert((now_ms, request_id.clone()));
        self.deliveries.insert(
            request_id.clone(),
            Delivery {
                request_id,
                url,
                state: DeliveryState::Pending {
                    next_attempt_ms: now_ms,
                },
                attempts: 0,
                last_error: None,
                created_at_ms: now_ms,
            },
        );
        true
    }

    pub fn apply(&mut self, cmd: WebhookCommand) -> WebhookResult {
        match cmd {
            WebhookCommand::Attempted {
                request_id,
                attempt,
                now_ms,
                outcome,
            } => {
                let Some(d) = self.deliveries.get_mut(&request_id) else {
                    return WebhookResult::NotFound;
                };
                let DeliveryState::Pending { next_attempt_ms } = d.state else {
                    return WebhookResult::Ignored;
                };
                if attempt != d.attempts.saturating_add(1) {
                    return WebhookResult::Ignored;
                }
                self.due.remove(&(next_attempt_ms, request_id.clone()));
                d.attempts = attempt;
                match outcome {
                    AttemptOutcome::Delivered { http_status } => {
                        d.state = DeliveryState::Delivered {
                            at_ms: now_ms,
                            http_status,
                        };
                        self.delivered.insert((now_ms, request_id));
                    }
                    AttemptOutcome::Retry {
                        next_attempt_ms,
                        error,
                    } => {
                        d.last_error = Some(clip(error));
                        d.state = DeliveryState::Pending { next_attempt_ms };
                        self.due.insert((next_attempt_ms, request_id));
                    }
                    AttemptOutcome::GaveUp { error } => {
                        d.last_error = Some(clip(error));
                        d.state = DeliveryState::Failed { at_ms: now_ms };
                        self.failed.insert((now_ms, request_id));
                    }
                }
                self.trim();
                WebhookResult::Applied
            }
            WebhookCommand::Retry { request_id, now_ms } => {
                let Some(d) = self.deliveries.get_mut(&request_id) else {
                    return WebhookResult::NotFound;
                };
                let DeliveryState::Failed { at_ms } = d.state else {
                    return WebhookResult::Ignored;
                };
                self.failed.remove(&(at_ms, request_id.clone()));
                d.attempts = 0;
                d.state = DeliveryState::Pending {
                    next_attempt_ms: now_ms,
                };
                self.due.insert((now_ms, request_id));
                WebhookResult::Applied
            }
        }
    }

    fn trim(&mut self) {
        for (set, max) in [
            (&mut self.delivered, DELIVERED_KEPT_MAX),
            (&mut self.failed, FAILED_KEPT_MAX),
        ] {
            while set.len() > max {
                if let Some((_, id)) = set.pop_first() {
                    self.deliveries.remove(&id);
                }
            }
        }
    }

    pub fn get(&self, id: &RequestId) -> Option<&Delivery> {
        self.deliveries.get(id)
    }

    /// Pending deliveries due at or before `now_ms`, earliest first, at most `limit`.
    pub fn due(&self, now_ms: u64, limit: usize) -> Vec<&Delivery> {
        self.due
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(limit)
            .filter_map(|(_, id)| self.deliveries.get(id))
            .collect()
    }

    /// When the earliest pending delivery is due.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.due.first().map(|(at, _)| *at)
    }

    pub fn pending_len(&self) -> usize {
        self.due.len()
    }

    /// Deliveries that gave up, most recent first.
    pub fn failed(&self) -> impl Iterator<Item = &Delivery> {
        self.failed
            .iter()
            .rev()
            .filter_map(|(_, id)| self.deliveries.get(id))
    }

    pub fn to_snapshot_bytes(&self) -> Result<Vec<u8>, ProtoError> {
        codec::encode(&TableData {
            deliveries: self.deliveries.values().cloned().collect(),
        })
    }

    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let data: TableData = codec::decode(bytes)?;
        let mut t = Self::default();
        for d in data.deliveries {
            let id = d.request_id.clone();
            match d.state {
                DeliveryState::Pending { next_attempt_ms } => {
                    t.due.insert((next_attempt_ms, id.clone()));
                }
                DeliveryState::Delivered { at_ms, .. } => {
                    t.delivered.insert((at_ms, id.clone()));
                }
                DeliveryState::Failed { at_ms } => {
                    t.failed.insert((at_ms, id.clone()));
                }
            }
            t.deliveries.insert(id, d);
        }
        Ok(t)
    }
}

fn clip(mut s: String) -> String {
    if s.len() > ERROR_LEN_MAX {
        let mut cut = ERROR_LEN_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attempted(id: &RequestId, attempt: u32, outcome: AttemptOutcome) -> WebhookCommand {
        WebhookCommand::Attempted {
            request_id: id.clone(),
            attempt,
            now_ms: 100 * u64::from(attempt),
            outcome,
        }
    }

    #[test]
    fn pending_retry_delivered() {
        let mut t = WebhookTable::default();
        let id = RequestId::new_random();
        assert!(t.enqueue(id.clone(), "http://x/h".into(), 10));
        assert!(!t.enqueue(id.clone(), "http://x/h".into(), 11));
        assert_eq!(t.due(10, 10).len(), 1);
        assert!(t.due(9, 10).is_empty());
        let retry = AttemptOutcome::Retry {
            next_attempt_ms: 500,
            error: "refused".into(),
        };
        assert_eq!(
            t.apply(attempted(&id, 1, retry.clone())),
            WebhookResult::Applied
        );
        // The same report twice (a re-proposal) is ignored.
        assert_eq!(t.apply(attempted(&id, 1, retry)), WebhookResult::Ignored);
        assert!(t.due(499, 10).is_empty());
        assert_eq!(t.next_due_ms(), Some(500));
        let ok = AttemptOutcome::Delivered { http_status: 204 };
        assert_eq!(t.apply(attempted(&id, 2, ok)), WebhookResult::Applied);
        assert_eq!(t.pending_len(), 0);
        assert!(matches!(
            t.get(&id).unwrap().state,
            DeliveryState::Delivered {
                http_status: 204,
                ..
            }
        ));
    }

    #[test]
    fn a_finished_job_with_a_webhook_owes_a_delivery_in_the_same_apply() {
        use runmesh_proto::{Command, JobCommand, JobSpec, ModelId, Priority, SubmitMode};
        let mut state = crate::ClusterState::default();
        let spec = |hook: Option<&str>| JobSpec {
            request_id: RequestId::new_random(),
            model: ModelId::parse("runmesh/echo").unwrap(),
            input_json: "{}".into(),
            webhook_url: hook.map(String::from),
            priority: Priority::Normal,
            start_timeout_ms: None,
            runner_hint: None,
            no_retry: false,
            mode: SubmitMode::Queue,
            submitted_by: None,
            accepted_by: 1,
            accepted_region: None,
            submitted_at_ms: 1,
        };
        let (with, without) = (spec(Some("http://h/x")), spec(None));
        let mut touched = Vec::new();
        for s in [with.clone(), without.clone()] {
            state.apply(Command::Job(JobCommand::Submit { spec: s }), &mut touched);
        }
        assert_eq!(state.webhooks.pending_len(), 0);
        // Cancelling a queued job ends it at once.
        for s in [&with, &without] {
            state.apply(
                Command::Job(JobCommand::RequestCancel {
                    request_id: s.request_id.clone(),
                    now_ms: 50,
                }),
                &mut touched,
            );
        }
        assert_eq!(state.webhooks.pending_len(), 1);
        let d = state.webhooks.get(&with.request_id).unwrap();
        assert_eq!((d.url.as_str(), d.created_at_ms), ("http://h/x", 50));
        assert!(state.webhooks.get(&without.request_id).is_none());
        let back =
            crate::ClusterState::from_snapshot_bytes(&state.to_snapshot_bytes().unwrap()).unwrap();
        assert_eq!(back.webhooks.pending_len(), 1);
        // Result retention passes: the job that still owes its webhook is kept, the other goes.
        let expire = Command::Job(JobCommand::Expire {
            now_ms: 10_000,
            retention: runmesh_proto::Retention {
                retain_ms: 1,
                large_retain_ms: 1,
            },
        });
        assert_eq!(
            state.apply(expire.clone(), &mut touched),
            runmesh_proto::CommandOutput::Job(runmesh_proto::CommandResult::Expired { removed: 1 })
        );
        assert!(state.jobs.get(&with.request_id).is_some());
        assert!(state.jobs.get(&without.request_id).is_none());
        let delivered = AttemptOutcome::Delivered { http_status: 200 };
        state.apply(
            Command::Webhook(attempted(&with.request_id, 1, delivered)),
            &mut touched,
        );
        state.apply(expire, &mut touched);
        assert!(state.jobs.is_empty());
    }

    #[test]
    fn gave_up_is_listed_and_can_be_retried_and_survives_snapshots() {
        let mut t = WebhookTable::default();
        let id = RequestId::new_random();
        t.enqueue(id.clone(), "http://x/h".into(), 0);
        let gave_up = AttemptOutcome::GaveUp {
            error: "e".repeat(2000),
        };
        assert_eq!(t.apply(attempted(&id, 1, gave_up)), WebhookResult::Applied);
        assert_eq!(t.failed().count(), 1);
        assert_eq!(
            t.failed()
                .next()
                .unwrap()
                .last_error
                .as_ref()
                .unwrap()
                .len(),
            ERROR_LEN_MAX
        );
        let back = WebhookTable::from_snapshot_bytes(&t.to_snapshot_bytes().unwrap()).unwrap();
        assert_eq!(back.failed().count(), 1);
        assert_eq!(
            t.apply(WebhookCommand::Retry {
                request_id: id.clone(),
                now_ms: 7
            }),
            WebhookResult::Applied
        );
        assert_eq!(t.failed().count(), 0);
        assert_eq!(t.due(7, 10).len(), 1);
        assert_eq!(t.get(&id).unwrap().attempts, 0);
    }
}
