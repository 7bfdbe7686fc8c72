//! The job log keeps every acknowledged command across restarts, snapshots included.

use std::sync::Arc;
use std::time::Duration;

use runmesh_proto::{CommandResult, JobCommand, JobSpec, JobState, RequestId, SystemClock};
use runmesh_raft::transport::NoNetwork;
use runmesh_raft::{JobLog, JobLogConfig};

mod common;

fn spec(n: u64) -> JobSpec {
    common::spec("runmesh/echo", format!(r#"{{"n":{n}}}"#), n)
}

async fn open(cfg: JobLogConfig) -> JobLog {
    // After an abrupt runtime drop, sled's file lock is released only once the dropped tasks' last
    // handles go (a real restarted process has no such wait): retry briefly while it is busy.
    let mut tries = 0;
    let log = loop {
        match JobLog::open(cfg.clone(), Arc::new(SystemClock), Arc::new(NoNetwork)).await {
            Ok(log) => break log,
            Err(e) if tries < 100 && e.to_string().contains("lock") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("open job log: {e}"),
        }
    };
    assert!(log.wait_healthy(Duration::from_secs(10)).await, "no leader");
    log
}

/// Submits `n` jobs concurrently and returns their ids once all are acknowledged.
async fn submit_many(log: &JobLog, n: u64) -> Vec<RequestId> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let s = spec(i);
            let id = s.request_id.clone();
            let r = log
                .propose(JobCommand::Submit { spec: s })
                .await
                .expect("propose");
            assert!(matches!(r, CommandResult::Submitted { .. }), "{r:?}");
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task"));
    }
    ids
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn acknowledged_jobs_survive_an_abrupt_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = JobLogConfig::single_node(dir.path().join("raft"));

    // First life: submit, then drop the whole runtime without a graceful shutdown.
    let rt = runtime();
    let ids = rt.block_on(async {
        let log = open(cfg.clone()).await;
        submit_many(&log, 300).await
    });
    rt.shutdown_timeout(Duration::from_millis(10));

    // Second life: every acknowledged job is there, still queued, in arrival order.
    let rt = runtime();
    rt.block_on(async {
        let log = open(cfg.clone()).await;
        log.read(|t| {
            assert_eq!(t.len(), ids.len());
            for id in &ids {
                assert_eq!(t.get(id).expect("job kept").state, JobState::Queued);
            }
            assert_eq!(t.queued_in_order().count(), ids.len());
        });
        // The log still takes writes after the restart.
        let more = submit_many(&log, 5).await;
        assert_eq!(log.read(|t| t.len()), ids.len() + more.len());
        log.shutdown().await;
    });
}

#[test]
fn snapshots_and_log_replay_rebuild_the_same_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = JobLogConfig::single_node(dir.path().join("raft"));
    cfg.snapshot_every_entries = 20;
    cfg.batch_max = 4;

    let rt = runtime();
    let (ids, before) = rt.block_on(async {
        let log = open(cfg.clone()).await;
        let ids = submit_many(&log, 200).await;
        // Move some jobs along so the snapshot holds more than queued jobs.
        for id in ids.iter().take(10) {
            let r = log
                .propose(JobCommand::Assign {
                    request_id: id.clone(),
                    worker: 1,
                    lease_ms: 60_000,
                    now_ms: log.now_ms(),
                })
                .await
                .expect("assign");
            assert_eq!(r, CommandResult::Assigned { attempt: 1 });
        }
        log.snapshot().await.expect("snapshot");
        let more = submit_many(&log, 50).await;
        let before = log.read(|t| t.to_snapshot_bytes().expect("encode"));
        log.shutdown().await;
        ([ids, more].concat(), before)
    });
    drop(rt);

    let rt = runtime();
    rt.block_on(async {
        let log = open(cfg).await;
        let after = log.read(|t| t.to_snapshot_bytes().expect("encode"));
        assert_eq!(after, before, "table after restart differs");
        assert_eq!(log.read(|t| t.len()), ids.len());
        log.shutdown().await;
    });
}

/// A log purged after a snapshot (openraft keeps the last 1 000 entries) opens again: the purge
/// point is read back the way it is written.
#[test]
fn a_purged_log_opens_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = JobLogConfig::single_node(dir.path().join("raft"));
    cfg.snapshot_every_entries = 20;
    cfg.batch_max = 1;
    let rt = runtime();
    let (ids, before) = rt.block_on(async {
        let log = open(cfg.clone()).await;
        let ids = submit_many(&log, 1_200).await;
        log.snapshot().await.expect("snapshot");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while log.raft().metrics().borrow().purged.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the log was never purged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = log.read(|t| t.to_snapshot_bytes().expect("encode"));
        log.shutdown().await;
        (ids, before)
    });
    drop(rt);
    let rt = runtime();
    rt.block_on(async {
        let log = open(cfg).await;
        assert_eq!(log.read(|t| t.len()), ids.len());
        let after = log.read(|t| t.to_snapshot_bytes().expect("encode"));
        assert_eq!(after, before, "table after restart differs");
        log.shutdown().await;
    });
}

/// An entry is in the acknowledged-entries record (raft/src/acknowledged.rs) before anyone hears it is
/// committed, so a crash right after an acknowledgement never hides damage to it.
#[test]
fn every_acknowledged_entry_is_recorded_before_it_is_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = JobLogConfig::single_node(dir.path().join("raft"));
    let record_dir = dir.path().join("raft");
    let rt = runtime();
    rt.block_on(async {
        let log = open(cfg).await;
        for i in 0..20 {
            let r = log
                .propose(JobCommand::Submit { spec: spec(i) })
                .await
                .expect("submit");
            assert!(matches!(r, CommandResult::Submitted { .. }), "{r:?}");
            // Read at once, with no time for a background writer.
            let applied = log.raft().metrics().borrow().last_applied.map(|l| l.index);
            let (_, found) =
                runmesh_raft::acknowledged::Recorder::open(&record_dir).expect("the record reads");
            let rec = found.expect("a record");
            assert!(
                rec.last_log_index >= applied,
                "submit {i}: acknowledged up to {applied:?}, recorded {:?}",
                rec.last_log_index
            );
        }
        log.shutdown().await;
    });
}
