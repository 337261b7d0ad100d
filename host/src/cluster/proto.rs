//! The messages of the control plane, as gRPC carries them (protobuf, by prost), and
//! the generated service. One bidirectional stream per worker, `Attach`: the worker
//! registers on it and then reports; the coordinator assigns and controls. Checkpoint
//! reports and controls are the host's own types, carried encoded: both ends run the
//! same weir, which [`Register::version`] checks.

#![allow(missing_docs, clippy::derive_partial_eq_without_eq)]

include!(concat!(env!("OUT_DIR"), "/weir.cluster.Coordinator.rs"));

/// What a worker sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkerMessage {
    #[prost(oneof = "worker_message::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<worker_message::Kind>,
}

pub mod worker_message {
    /// What a worker sends.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// First, once: who it is.
        #[prost(message, tag = "1")]
        Register(super::Register),
        /// Every heartbeat interval: it is alive.
        #[prost(message, tag = "2")]
        Heartbeat(super::Heartbeat),
        /// One of its subtasks ended.
        #[prost(message, tag = "3")]
        TaskEnded(super::TaskEnded),
        /// A checkpoint report of one of its subtasks, or a failure of its attempt.
        #[prost(message, tag = "4")]
        Report(super::Report),
        /// Its share of an attempt has ended: every subtask of it is accounted for.
        #[prost(message, tag = "5")]
        AttemptEnded(super::AttemptEnded),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Register {
    /// The weir version the worker runs; the coordinator refuses another.
    #[prost(string, tag = "1")]
    pub version: String,
    /// Where the other workers reach its data port, `host:port`.
    #[prost(string, tag = "2")]
    pub data_address: String,
    /// Its name for logs (its host name).
    #[prost(string, tag = "3")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Heartbeat {}

/// How a subtask ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Ending {
    Finished = 0,
    Failed = 1,
    Disconnected = 2,
    Cancelled = 3,
}

/// Whose fault a failure is, as [`crate::runtime::Fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Fault {
    Guest = 0,
    User = 1,
    External = 2,
    Host = 3,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskEnded {
    #[prost(uint64, tag = "1")]
    pub attempt: u64,
    /// The subtask's name, `node (i/n)`.
    #[prost(string, tag = "2")]
    pub task: String,
    #[prost(enumeration = "Ending", tag = "3")]
    pub ending: i32,
    #[prost(enumeration = "Fault", tag = "4")]
    pub fault: i32,
    /// The failure, as a sentence.
    #[prost(string, tag = "5")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Report {
    #[prost(uint64, tag = "1")]
    pub attempt: u64,
    #[prost(oneof = "report::Kind", tags = "2, 3")]
    pub kind: Option<report::Kind>,
}

pub mod report {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// A `CoordinatorMessage` (an acknowledgement, a decline, a source's end), as
        /// JSON.
        #[prost(bytes, tag = "2")]
        Checkpoint(Vec<u8>),
        /// The attempt failed on the worker (a link to another worker, a restore), as
        /// a sentence.
        #[prost(string, tag = "3")]
        Failure(String),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttemptEnded {
    #[prost(uint64, tag = "1")]
    pub attempt: u64,
}

/// What the coordinator sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CoordinatorCommand {
    #[prost(oneof = "coordinator_command::Kind", tags = "1, 2, 3, 4")]
    pub kind: Option<coordinator_command::Kind>,
}

pub mod coordinator_command {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// The answer to `Register`.
        #[prost(message, tag = "1")]
        Welcome(super::Welcome),
        /// Run a share of an attempt of the job.
        #[prost(message, tag = "2")]
        Assign(super::Assign),
        /// A control for one subtask: trigger, complete, abort, finish.
        #[prost(message, tag = "3")]
        Control(super::TaskControl),
        /// Stop the attempt.
        #[prost(message, tag = "4")]
        Cancel(super::Cancel),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Welcome {
    /// How often to send a heartbeat, in milliseconds.
    #[prost(uint64, tag = "1")]
    pub heartbeat_interval_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Assign {
    #[prost(uint64, tag = "1")]
    pub attempt: u64,
    /// The job file's path, where its relative paths resolve on every machine.
    #[prost(string, tag = "2")]
    pub job_path: String,
    /// The job file's text, as the coordinator read it.
    #[prost(string, tag = "3")]
    pub job_text: String,
    /// The coordinator's `-D` overrides, `key=value`.
    #[prost(string, repeated, tag = "4")]
    pub overrides: Vec<String>,
    /// This worker's number in the attempt, from 0.
    #[prost(uint32, tag = "5")]
    pub index: u32,
    /// Every worker's data address, by number.
    #[prost(string, repeated, tag = "6")]
    pub peers: Vec<String>,
    /// The checkpoint to restore, in the job's storage; 0 for none.
    #[prost(uint64, tag = "7")]
    pub restore_checkpoint: u64,
    /// Or the retained checkpoint or savepoint to restore; empty for none.
    #[prost(string, tag = "8")]
    pub restore_at: String,
    #[prost(bool, tag = "9")]
    pub allow_non_restored_state: bool,
    #[prost(bool, tag = "10")]
    pub allow_duplicates: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskControl {
    #[prost(uint64, tag = "1")]
    pub attempt: u64,
    #[prost(uint32, tag = "2")]
    pub node: u32,
    #[prost(uint32, tag = "3")]
    pub subtask: u32,
    /// The `Control`, as JSON.
    #[prost(bytes, tag = "4")]
    pub control: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Cancel {
    #[prost(uint64, tag = "1")]
    pub attempt: u64,
}
