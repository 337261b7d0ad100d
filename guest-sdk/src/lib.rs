//! Write Weir stream operators in Rust.
//!
//! An operator is a type that implements [`Operator`]; [`export_operator!`] turns the
//! crate into a WebAssembly component that exports the `weir:operator/handler`
//! interface of `wit/operator.wit`. Build it with
//! `cargo build --target wasm32-wasip2 --release` and name the `.wasm` file in a job.
//!
//! The host calls one instance per subtask, from one thread: [`Operator::open`], then
//! [`Operator::restore_state`] when the job restores from a checkpoint, then any number of
//! [`Operator::process`], [`Operator::on_timer`], [`Operator::on_watermark`],
//! [`Operator::snapshot_state`] and checkpoint notifications, then [`Operator::close`].
//! Records come in a [`Batch`] of flat buffers and are read as borrowed [`RecordRef`]
//! views; records passed to [`Output::emit`] are appended to flat buffers that go
//! downstream in one host call when the method returns. Nothing is allocated per record.
//!
//! Keyed state ([`ValueState`], [`ListState`], [`MapState`]) and [`timers`] are kept and
//! checkpointed by the host; state an operator keeps in its own fields survives a restart
//! only through [`Operator::snapshot_state`] and [`Operator::restore_state`].
//!
//! ```no_run
//! use std::io::Write;
//! use weir_sdk::{Batch, Context, Operator, Output, Result, ValueState};
//!
//! /// Counts the records of each key and emits the running count.
//! struct CountPerKey {
//!     counts: ValueState<u64>,
//! }
//!
//! impl Operator for CountPerKey {
//!     fn open(_ctx: &Context) -> Result<Self> {
//!         Ok(Self { counts: ValueState::open("counts")? })
//!     }
//!
//!     fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()> {
//!         // One host call reads the counts of all the batch's keys, one writes them back.
//!         self.counts.update_each(batch, |record, key, count| {
//!             let n = count.unwrap_or(0) + 1;
//!             *count = Some(n);
//!             out.emit_with(Some(key), record.timestamp, |v| { let _ = write!(v, "{n}"); });
//!             Ok(())
//!         })
//!     }
//! }
//!
//! weir_sdk::export_operator!(CountPerKey);
//! ```
//!
//! # Layout
//!
//! - `batch`: records in flat buffers: [`Batch`], [`RecordRef`] and the [`Output`]
//!   buffer.
//! - `types`: the other data the host and the operator exchange ([`Record`],
//!   [`Context`], [`Timers`]) and [`Error`].
//! - `operator`: the [`Operator`] trait.
//! - `state`: typed handles over the host's keyed state, encoded with postcard.
//! - [`timers`], [`log`]: thin wrappers over the matching imports.
//! - `export`: [`export_operator!`] and the hidden adapter it expands to.
//! - `__bindings`: the code `wit-bindgen` generates; not part of the API.
#![deny(missing_docs)]

mod batch;
mod export;
pub mod log;
mod operator;
mod state;
pub mod timers;
mod types;

pub use batch::{Batch, Output, RecordRef};
pub use operator::Operator;
pub use state::{ListState, MapState, ValueState};
pub use types::{CheckpointId, Context, Error, Record, Result, TimeDomain, Timer, Timers};

/// What [`export_operator!`] expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{Instance, Slot};
}

/// Generated bindings of `wit/`; the only `generate!` site of the guest side.
///
/// The batch types stay the generated ones: the SDK's [`Batch`] and [`Output`] wrap them,
/// so a batch the host lowered is read in place and an output is lowered as it was
/// built. `pub_export_macro` and `default_bindings_module` let the crate that invokes
/// [`export_operator!`] export the handler through these bindings.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "operator",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "weir_sdk::__bindings",
    });
}
