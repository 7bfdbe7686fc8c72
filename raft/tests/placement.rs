//! Placement at submit: with a placer installed, the leader writes a submit and its placement as
//! one entry, and the placer's pending count is settled once the entry is applied.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runmesh_proto::{CommandResult, JobCommand, JobSpec, JobState, NodeId, SystemClock};
use runmesh_raft::transport::NoNetwork;
use runmesh_raft::{JobLog, JobLogConfig, PlacementView, SubmitPlacer};

mod common;

fn spec(model: &str) -> JobSpec {
    common::spec(model, "{}".into(), 0)
}

fn state_of(log: &JobLog, spec: &JobSpec) -> JobState {
    log.read(|t| t.get(&spec.request_id).expect("job").state.clone())
}

/// Places echo jobs on node 1 and nothing else; records what it was asked and what settled.
#[derive(Default)]
struct EchoOnOne {
    asked: AtomicUsize,
    settled: Mutex<Vec<NodeId>>,
    members_seen: Mutex<Vec<NodeId>>,
}

impl SubmitPlacer for EchoOnOne {
    fn place(&self, view: &PlacementView<'_>, specs: &[&JobSpec]) -> Vec<Option<NodeId>> {
        self.asked.fetch_add(specs.len(), Ordering::SeqCst);
        *self.members_seen.lock().expect("lock") = view.members.iter().copied().collect();
        specs
            .iter()
            .map(|s| (s.model.app.alias == "echo").then_some(1))
            .collect()
    }
    fn settled(&self, workers: &[NodeId]) {
        self.settled
            .lock()
            .expect("lock")
            .extend_from_slice(workers);
    }
    fn lease_ms(&self) -> u64 {
        4_000
    }
}

impl EchoOnOne {
    /// What has settled once anything has, or (empty) at the deadline.
    async fn settled_within(&self, timeout: Duration) -> Vec<NodeId> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let settled = self.settled.lock().expect("lock").clone();
            if !settled.is_empty() || tokio::time::Instant::now() >= deadline {
                return settled;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_submit_starts_running_in_its_own_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = JobLogConfig::single_node(dir.path().join("raft"));
    let log = JobLog::open(cfg, Arc::new(SystemClock), Arc::new(NoNetwork))
        .await
        .expect("open");
    assert!(log.wait_healthy(Duration::from_secs(10)).await, "no leader");
    // A leader is known before its state machine has applied the founding membership, and the
    // placer is shown the applied members: wait for them, bounded.
    let membership_index = log
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .log_id()
        .map(|id| id.index);
    log.raft()
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(membership_index, "founding membership applied")
        .await
        .expect("membership applied");
    let placer = Arc::new(EchoOnOne::default());
    log.set_placer(Some(placer.clone()));

    let echo = spec("runmesh/echo");
    let other = spec("runmesh/sleep");
    let r = log
        .propose(JobCommand::Submit { spec: echo.clone() })
        .await
        .expect("submit echo");
    assert!(matches!(r, CommandResult::Submitted { .. }), "{r:?}");
    // Running as soon as the submit returns: nothing else here could have assigned it.
    match state_of(&log, &echo) {
        JobState::Running {
            worker,
            attempt,
            started_at_ms,
            lease_until_ms,
        } => {
            assert_eq!((worker, attempt), (1, 1));
            assert_eq!(lease_until_ms - started_at_ms, 4_000);
        }
        s => panic!("placed job is {s:?}"),
    }
    // The settle runs when the write's guard drops, which may be a moment after `propose`
    // returned to us: wait for it, bounded.
    let settled = placer.settled_within(Duration::from_secs(10)).await;
    assert_eq!(settled, vec![1]);
    assert_eq!(*placer.members_seen.lock().expect("lock"), vec![1]);

    // The placer declines: a plain queued submit.
    log.propose(JobCommand::Submit {
        spec: other.clone(),
    })
    .await
    .expect("submit other");
    assert_eq!(state_of(&log, &other), JobState::Queued);

    // A replayed submit of a placed job changes nothing (it is not placed twice).
    let again = log
        .propose(JobCommand::Submit { spec: echo.clone() })
        .await
        .expect("replay");
    assert_eq!(again, CommandResult::Duplicate);
    log.read(|t| assert_eq!(t.get(&echo.request_id).expect("job").attempts, 1));

    // Without a placer, submits queue again.
    log.set_placer(None);
    let late = spec("runmesh/echo");
    log.propose(JobCommand::Submit { spec: late.clone() })
        .await
        .expect("submit late");
    assert_eq!(state_of(&log, &late), JobState::Queued);
    assert_eq!(placer.asked.load(Ordering::SeqCst), 3);
    log.shutdown().await;
}
