//! Weir runs stream-processing jobs whose operators are WebAssembly components.
//!
//! A job is a graph of host-native sources, guest operators and host-native sinks,
//! described in a TOML job file. The host runs every node as parallel subtasks, each on
//! its own thread, connected by bounded channels; guests are called with batches of
//! records and keep keyed state in the host's state backend.
//!
//! # Layout
//! - [`job`]: the job file, its validation and overrides; the logical graph.
//! - [`runtime`]: subtasks, channels, partitioning, key groups, the executor.
//! - [`checkpoint`]: the checkpoint coordinator's decisions, barrier alignment,
//!   restart strategies and retention (pure), and the driver that carries them out.
//! - [`state`]: the keyed state backends and timers.
//! - [`wasm`]: wasmtime, the WIT host side, compiled-component cache.
//! - [`storage`]: checkpoint storage (local files; S3 to come).
//! - [`connectors`]: sources and sinks.
//! - [`exchange`]: channels between workers, over TCP with credit-based flow control.
//! - [`cluster`]: `weir coordinator` and `weir worker`, the control plane over gRPC.
//! - [`observe`]: checkpoint statistics for people (`weir checkpoints list/show/diagnose`).
//! - [`launch`]: the composition root, from a job spec to a runnable graph.

pub mod checkpoint;
pub mod cluster;
pub mod connectors;
pub mod exchange;
pub mod job;
pub mod launch;
pub mod observe;
pub mod runtime;
pub mod state;
pub mod storage;
pub mod wasm;
