//! [`WasmOperator`]: one guest instance, driven by one subtask.
//!
//! Each call hands the guest a whole batch and collects what it emitted from the store
//! afterwards; the subtask routes it. A trap ends the instance: it is reported with the
//! guest's backtrace and never called again.

use crate::runtime::keygroup::KeyGroupRange;
use crate::runtime::{
    CheckpointId, Fault, Operator, Record, Snapshot, TaskError, TaskInfo, now_ms,
};
use crate::state::{Domain, KeyedStateBackend, Timers};
use crate::wasm::OperatorComponent;
use crate::wasm::bindings::{self, Context, GuestError, TimeDomain, Timer};
use crate::wasm::host::GuestState;
use crate::wasm::stdio::{LogStream, Stream};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtx;

/// A guest operator instance of one subtask.
pub struct WasmOperator {
    store: Store<GuestState>,
    guest: bindings::Operator,
    context: Context,
    /// Set once the instance trapped: it must not be entered again.
    trapped: bool,
    /// Set once `close` returned: the operator is finished.
    closed: bool,
}

/// What a WASM operator subtask puts into a checkpoint.
#[derive(Serialize, Deserialize)]
struct GuestSnapshot {
    /// What the guest's `snapshot-state` returned.
    operator: Vec<u8>,
    /// The keyed state, as the backend encoded it.
    keyed: Vec<u8>,
    /// The registered timers.
    timers: Timers,
}

impl WasmOperator {
    pub(crate) fn new(
        component: &OperatorComponent,
        info: &TaskInfo,
        config: &str,
        backend: Box<dyn KeyedStateBackend>,
    ) -> Result<Self, TaskError> {
        let task: Arc<str> = Arc::from(info.name());
        let wasi = WasiCtx::builder()
            .stdout(LogStream::new(task.clone(), Stream::Stdout))
            .stderr(LogStream::new(task, Stream::Stderr))
            .build();
        let state = GuestState {
            wasi,
            table: ResourceTable::new(),
            backend,
            groups: KeyGroupRange::for_subtask(
                info.subtask,
                info.parallelism,
                info.max_parallelism,
            ),
            max_parallelism: info.max_parallelism,
            out: Vec::new(),
            timers: Timers::default(),
            watermark: None,
            opening: false,
            emitting: false,
        };
        let mut store = Store::new(&component.engine, state);
        let guest = component.pre.instantiate(&mut store).map_err(|e| {
            TaskError::failed(
                Fault::Guest,
                format!("could not instantiate {}: {e:?}", component.path.display()),
            )
        })?;
        let context = Context {
            operator_id: info.node.clone(),
            config: config.to_owned(),
            subtask_index: info.subtask.0,
            parallelism: info.parallelism,
            max_parallelism: info.max_parallelism,
            restored: false,
        };
        Ok(Self {
            store,
            guest,
            context,
            trapped: false,
            closed: false,
        })
    }

    /// Turns the outcome of a guest call into the runtime's terms.
    fn check<T>(
        &mut self,
        function: &str,
        result: wasmtime::Result<Result<T, GuestError>>,
    ) -> Result<T, TaskError> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(TaskError::failed(
                Fault::Guest,
                format!(
                    "the operator returned an error from `{function}`: {}",
                    error.message
                ),
            )),
            Err(trap) => {
                self.trapped = true;
                Err(TaskError::failed(
                    Fault::Guest,
                    format!("the operator trapped in `{function}`: {trap:?}"),
                ))
            }
        }
    }

    fn entered(&self) -> Result<(), TaskError> {
        if self.trapped {
            return Err(TaskError::failed(
                Fault::Host,
                "a trapped guest instance was called again",
            ));
        }
        Ok(())
    }

    /// Fires the timers of `domain` due at `time`, in one guest call.
    fn fire(&mut self, domain: Domain, time: i64) -> Result<(), TaskError> {
        let due = self.store.data_mut().timers.take_due(domain, time);
        if due.is_empty() {
            return Ok(());
        }
        let wit_domain = match domain {
            Domain::EventTime => TimeDomain::EventTime,
            Domain::ProcessingTime => TimeDomain::ProcessingTime,
        };
        let timers: Vec<Timer> = due
            .into_iter()
            .map(|(timestamp, key)| Timer {
                key,
                timestamp,
                domain: wit_domain,
            })
            .collect();
        let result = self
            .guest
            .weir_operator_handler()
            .call_on_timer(&mut self.store, &timers);
        self.check("on-timer", result)
    }

    /// Tells an open guest how `checkpoint` ended; a closed one has nothing to commit.
    fn notify(&mut self, checkpoint: CheckpointId, complete: bool) -> Result<(), TaskError> {
        if self.closed {
            return Ok(());
        }
        self.entered()?;
        let handler = self.guest.weir_operator_handler();
        if complete {
            let result = handler.call_notify_checkpoint_complete(&mut self.store, checkpoint.0);
            self.check("notify-checkpoint-complete", result)
        } else {
            let result = handler.call_notify_checkpoint_aborted(&mut self.store, checkpoint.0);
            self.check("notify-checkpoint-aborted", result)
        }
    }

    /// Runs a guest call during which it may emit records.
    fn emitting<T>(
        &mut self,
        call: impl FnOnce(&mut Self) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        self.store.data_mut().emitting = true;
        let result = call(self);
        self.store.data_mut().emitting = false;
        result
    }

    fn take_output(&mut self, out: &mut Vec<Record>) {
        let emitted = &mut self.store.data_mut().out;
        if out.is_empty() {
            std::mem::swap(out, emitted);
        } else {
            out.append(emitted);
        }
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> TaskError {
    TaskError::failed(
        Fault::External,
        format!("the checkpointed {what} cannot be restored: {e}"),
    )
}

impl Operator for WasmOperator {
    fn open(&mut self, restored: Option<Vec<u8>>) -> Result<(), TaskError> {
        self.entered()?;
        let operator_state = match restored {
            Some(bytes) => {
                let snapshot: GuestSnapshot =
                    postcard::from_bytes(&bytes).map_err(|e| corrupt("operator state", e))?;
                let data = self.store.data_mut();
                data.backend
                    .restore(&snapshot.keyed)
                    .map_err(|e| corrupt("keyed state", e))?;
                data.timers = snapshot.timers;
                self.context.restored = true;
                Some(snapshot.operator)
            }
            None => None,
        };
        self.store.data_mut().opening = true;
        let result = self
            .guest
            .weir_operator_handler()
            .call_open(&mut self.store, &self.context);
        self.store.data_mut().opening = false;
        self.check("open", result)?;
        if let Some(state) = operator_state {
            let result = self
                .guest
                .weir_operator_handler()
                .call_restore_state(&mut self.store, &state);
            self.check("restore-state", result)?;
        }
        Ok(())
    }

    fn process(&mut self, batch: Vec<Record>, out: &mut Vec<Record>) -> Result<(), TaskError> {
        self.entered()?;
        // Same layout on both sides: this collects in place, without a new allocation.
        let batch: Vec<bindings::Record> = batch.into_iter().map(Into::into).collect();
        self.emitting(|op| {
            let result = op
                .guest
                .weir_operator_handler()
                .call_process(&mut op.store, &batch);
            op.check("process", result)
        })?;
        self.take_output(out);
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Record>) -> Result<(), TaskError> {
        self.entered()?;
        self.emitting(|op| {
            op.fire(Domain::EventTime, watermark)?;
            op.store.data_mut().watermark = Some(watermark);
            let result = op
                .guest
                .weir_operator_handler()
                .call_on_watermark(&mut op.store, watermark);
            op.check("on-watermark", result)
        })?;
        self.take_output(out);
        Ok(())
    }

    fn next_processing_timer(&self) -> Option<Instant> {
        let at = self.store.data().timers.next_processing_time()?;
        let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
        Some(Instant::now() + Duration::from_millis(wait))
    }

    fn on_processing_time(
        &mut self,
        _now: Instant,
        out: &mut Vec<Record>,
    ) -> Result<(), TaskError> {
        self.entered()?;
        self.emitting(|op| op.fire(Domain::ProcessingTime, now_ms()))?;
        self.take_output(out);
        Ok(())
    }

    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<Snapshot, TaskError> {
        if self.closed {
            return Ok(Snapshot::Finished);
        }
        self.entered()?;
        let result = self
            .guest
            .weir_operator_handler()
            .call_snapshot_state(&mut self.store, checkpoint.0);
        let operator = self.check("snapshot-state", result)?;
        let data = self.store.data();
        let keyed = data.backend.snapshot();
        let timers = data.timers.clone();
        Ok(Snapshot::State(Box::new(move || {
            let keyed = keyed().map_err(|e| {
                TaskError::failed(Fault::Host, format!("cannot encode the keyed state: {e}"))
            })?;
            postcard::to_allocvec(&GuestSnapshot {
                operator,
                keyed,
                timers,
            })
            .map_err(|e| {
                TaskError::failed(
                    Fault::Host,
                    format!("cannot encode the operator's snapshot: {e}"),
                )
            })
        })))
    }

    fn notify_checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<(), TaskError> {
        self.notify(checkpoint, true)
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint: CheckpointId) -> Result<(), TaskError> {
        self.notify(checkpoint, false)
    }

    fn close(&mut self, out: &mut Vec<Record>) -> Result<(), TaskError> {
        self.entered()?;
        self.emitting(|op| {
            let result = op.guest.weir_operator_handler().call_close(&mut op.store);
            op.check("close", result)
        })?;
        self.closed = true;
        self.take_output(out);
        Ok(())
    }
}
