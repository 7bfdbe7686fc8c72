//! Waiting on a job for a connected client: change notifications from the job log, and cancelling
//! the job when the client goes away.

use runmesh_proto::{JobCommand, RequestId};
use runmesh_raft::JobLog;
use tokio::sync::broadcast::{self, error::RecvError};

/// What the job log's change feed said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// This job changed, or notifications were lost (lagged): re-read it.
    This,
    /// Another job changed.
    Other(RequestId),
    /// The job log is gone.
    Closed,
}

pub(crate) async fn next_change(rx: &mut broadcast::Receiver<RequestId>, id: &RequestId) -> Change {
    match rx.recv().await {
        Ok(changed) if changed == *id => Change::This,
        Ok(changed) => Change::Other(changed),
        Err(RecvError::Lagged(_)) => Change::This,
        Err(RecvError::Closed) => Change::Closed,
    }
}

/// Cancels a sync/stream job if the client hangs up before it ends: the handler (or stream task)
/// holds this guard and disarms it once the answer is out. Dropping it armed proposes
/// `RequestCancel` from a spawned task, since `Drop` cannot wait.
pub(crate) struct CancelOnDrop {
    joblog: JobLog,
    id: RequestId,
    armed: bool,
}

impl CancelOnDrop {
    pub(crate) fn new(joblog: JobLog, id: RequestId) -> Self {
        Self {
            joblog,
            id,
            armed: true,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let joblog = self.joblog.clone();
        let id = self.id.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(request_id = %id, "client left outside a runtime; job not cancelled");
            return;
        };
        rt.spawn(async move {
            let now_ms = joblog.now_ms();
            let cmd = JobCommand::RequestCancel {
                request_id: id.clone(),
                now_ms,
            };
            match joblog.propose(cmd).await {
                Ok(result) => {
                    tracing::info!(request_id = %id, ?result, "client disconnected; cancel requested")
                }
                Err(e) => {
                    tracing::warn!(request_id = %id, error = %e, "client disconnected; cancel failed")
                }
            }
        });
    }
}
