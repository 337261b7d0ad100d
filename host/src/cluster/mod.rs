//! Beyond one machine: `weir coordinator` and `weir worker`.
//!
//! The coordinator runs the job as `weir run` does (the job graph, the checkpoint
//! coordinator, the restart strategy, checkpoint metadata in shared storage), but its
//! executor places the subtasks on workers instead of threads of its own
//! ([`crate::runtime::executor::Cluster`]). Workers attach over gRPC ([`proto`]),
//! receive their share of each attempt, store their snapshots in the same shared storage
//! and report on the same stream; their channels to each other go through the exchange
//! ([`crate::exchange`]). Subtask `i` of every node runs on worker `i mod n`.

pub mod coordinator;
pub mod proto;
pub mod worker;

pub use coordinator::{Coordinator, JobFile, Settings};
pub use worker::{WorkerError, WorkerOptions, run_worker};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Fault, TaskError};
    use std::time::Duration;

    #[test]
    fn a_subtask_end_reads_back_on_the_coordinator_as_the_worker_reported_it() {
        let ends = [
            Ok(()),
            Err(TaskError::Disconnected),
            Err(TaskError::Cancelled),
            Err(TaskError::failed(Fault::Guest, "the guest trapped")),
            Err(TaskError::failed(Fault::User, "a record without a key")),
            Err(TaskError::failed(Fault::External, "the disk is full")),
            Err(TaskError::failed(Fault::Host, "a bug")),
        ];
        for end in ends {
            let wire = worker::task_ended(7, "count (1/3)".to_owned(), &end);
            let back = coordinator::task_result(&wire);
            assert_eq!(format!("{back:?}"), format!("{end:?}"));
        }
    }

    #[test]
    fn a_worker_of_another_weir_version_is_refused_with_a_sentence() {
        let coordinator = Coordinator::new(
            JobFile {
                path: "/jobs/job.toml".to_owned(),
                text: String::new(),
                overrides: Vec::new(),
                allow_non_restored_state: false,
                allow_duplicates: false,
            },
            Settings {
                workers: 1,
                heartbeat_interval: Duration::from_secs(1),
                heartbeat_timeout: Duration::from_secs(5),
            },
        );
        let (commands, _) = tokio::sync::mpsc::unbounded_channel();
        let register = proto::Register {
            version: "0.0.0-other".to_owned(),
            data_address: "127.0.0.1:6121".to_owned(),
            name: "w".to_owned(),
        };
        let refused = coordinator
            .register(&register, None, commands)
            .expect_err("another version is refused");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused
                .message()
                .contains("run the same weir on every machine"),
            "{}",
            refused.message()
        );
    }
}
