//! [`PartialHub`]: partial outputs of running jobs, passed in-process from the worker to `/stream`
//! clients. Not in Raft: partials are chatty and only matter to a client connected right now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use runmesh_proto::RequestId;
use tokio::sync::broadcast;

/// Partials buffered per job for a slow reader; beyond it the reader skips ahead (lagged).
pub const PARTIALS_BUFFER_MAX: usize = 256;

/// Cheap to clone; clones share one registry.
#[derive(Clone, Default)]
pub struct PartialHub {
    channels: Arc<Mutex<HashMap<RequestId, broadcast::Sender<String>>>>,
}

impl PartialHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Receives the partials published for `id` from now on (JSON text). Subscribe before the job is
    /// submitted so that no partial is missed.
    pub fn subscribe(&self, id: &RequestId) -> broadcast::Receiver<String> {
        let mut channels = self.lock();
        // Channels whose readers all left (a client hung up, the job never closed) go here, so the
        // map is bounded by the number of live subscriptions.
        channels.retain(|_, tx| tx.receiver_count() > 0);
        channels
            .entry(id.clone())
            .or_insert_with(|| broadcast::channel(PARTIALS_BUFFER_MAX).0)
            .subscribe()
    }

    /// Passes a partial output to the current subscribers of `id`; a no-op when nobody listens.
    pub fn publish(&self, id: &RequestId, partial_json: String) {
        let mut channels = self.lock();
        if let Some(tx) = channels.get(id) {
            if tx.send(partial_json).is_err() {
                channels.remove(id);
            }
        }
    }

    /// The job ended: subscribers get what is buffered, then `Closed`.
    pub fn close(&self, id: &RequestId) {
        self.lock().remove(id);
    }

    /// Number of jobs with a channel (for tests and metrics).
    pub fn channels(&self) -> usize {
        self.lock().len()
    }

    /// Drops the channel of `id` if its last reader is gone.
    pub(crate) fn release(&self, id: &RequestId) {
        let mut channels = self.lock();
        if channels.get(id).is_some_and(|tx| tx.receiver_count() == 0) {
            channels.remove(id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RequestId, broadcast::Sender<String>>> {
        // The map stays consistent under any panic (single inserts/removes), so poison is harmless.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::sync::broadcast::error::TryRecvError;

    #[test]
    fn subscribers_get_partials_then_closed() {
        let hub = PartialHub::new();
        let id = RequestId::new_random();
        hub.publish(&id, "{\"i\":0}".into()); // nobody listens: dropped
        let mut rx = hub.subscribe(&id);
        hub.publish(&id, "{\"i\":1}".into());
        hub.close(&id);
        assert_eq!(rx.try_recv().unwrap(), "{\"i\":1}");
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
        assert_eq!(hub.channels(), 0);
    }

    #[test]
    fn abandoned_channels_are_reclaimed() {
        let hub = PartialHub::new();
        let a = RequestId::new_random();
        drop(hub.subscribe(&a));
        hub.publish(&a, "{}".into());
        assert_eq!(hub.channels(), 0);
        drop(hub.subscribe(&a));
        let b = RequestId::new_random();
        let _rx = hub.subscribe(&b);
        assert_eq!(hub.channels(), 1);
        hub.release(&b);
        assert_eq!(hub.channels(), 1);
    }
}
