//! runmesh's ground floor: identifiers, job specs and states, Raft commands, codecs and the clock seam.
//! No I/O lives here; every other crate builds on these types.

pub mod advert;
pub mod auth;
pub mod codec;
pub mod command;
pub mod fal;
pub mod idempotency;
pub mod ids;
pub mod job;
pub mod mesh;
pub mod roster;
pub mod time;
pub mod webhook;

pub use command::{Command, CommandOutput};
pub use ids::{AppId, ModelId, NodeId, RequestId};
pub use job::{
    file_hashes_in, CommandResult, ErrorType, FileRef, JobCommand, JobError, JobSpec, JobState,
    LogLevel, LogLine, Outcome, Priority, Rejection, Retention, SubmitMode, FILES_PER_JOB_MAX,
    LARGE_RESULT_BYTES,
};
pub use time::{Clock, SystemClock};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("invalid model id {0:?}: expected owner/alias[/subpath] of [A-Za-z0-9._-]")]
    InvalidModelId(String),
    #[error("invalid request id {0:?}")]
    InvalidRequestId(String),
    #[error("codec error: {0}")]
    Codec(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_the_codec() {
        let spec = JobSpec {
            request_id: RequestId::new_random(),
            model: ModelId::parse("runmesh/echo/x").unwrap(),
            input_json: r#"{"a":[1,2,{"b":null}]}"#.into(),
            webhook_url: Some("http://127.0.0.1:9/hook".into()),
            priority: Priority::Low,
            start_timeout_ms: Some(30_000),
            runner_hint: Some("h".into()),
            no_retry: false,
            mode: SubmitMode::Queue,
            submitted_by: None,
            accepted_by: 1,
            accepted_region: None,
            submitted_at_ms: 42,
        };
        let cmds = vec![JobCommand::Submit { spec }, JobCommand::Tick { now_ms: 7 }];
        let bytes = codec::encode(&cmds).unwrap();
        let back: Vec<JobCommand> = codec::decode(&bytes).unwrap();
        assert_eq!(back, cmds);
        assert!(codec::decode::<Vec<JobCommand>>(&bytes[..bytes.len() - 1]).is_err());
    }
}
