//! What the job log's integration tests share.

use runmesh_proto::{JobSpec, ModelId, Priority, RequestId, SubmitMode};

/// A queue job for `model` with this input, accepted by node 1 at `submitted_at_ms`.
pub fn spec(model: &str, input_json: String, submitted_at_ms: u64) -> JobSpec {
    JobSpec {
        request_id: RequestId::new_random(),
        model: ModelId::parse(model).expect("model id"),
        input_json,
        webhook_url: None,
        priority: Priority::Normal,
        start_timeout_ms: None,
        runner_hint: None,
        no_retry: false,
        mode: SubmitMode::Queue,
        submitted_by: None,
        accepted_by: 1,
        accepted_region: None,
        submitted_at_ms,
    }
}
