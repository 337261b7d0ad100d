//! [`crate::export_operator!`] and the adapter from the generated `Guest` trait of the
//! `handler` export to [`Operator`].
//!
//! The macro cannot be generic code in this crate because a `static` cannot depend on a
//! type parameter: it declares, in the operator's crate, one thread-local [`Instance`]
//! of the operator type and a unit type that implements [`Slot`] over it. Every type
//! that implements [`Slot`] implements `Guest` here, and the macro hands that unit type
//! to the export macro `wit-bindgen` generated.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::__bindings::exports::weir::operator::handler::{self as wit, Guest};
use crate::{Batch, CheckpointId, Context, Error, Operator, Output, Result, Timers};

/// The state of the exported component: the operator once it is open, and the output
/// buffer reused by every call.
pub struct Instance<T> {
    operator: Option<T>,
    output: Output,
}

impl<T> Instance<T> {
    /// An instance that is not open yet.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Self {
            operator: None,
            output: Output::new(),
        }
    }
}

impl<T: Operator> Instance<T> {
    /// Runs `method` of the open operator, then sends what it emitted downstream in one
    /// call, or drops it if the method failed.
    fn call<R>(
        &mut self,
        method: &str,
        f: impl FnOnce(&mut T, &mut Output) -> Result<R>,
    ) -> core::result::Result<R, wit::Error> {
        let Some(operator) = self.operator.as_mut() else {
            return Err(Error::new(format!(
                "`{method}` was called on an operator that is not open \
                 (before `open` succeeded, or after `close`)"
            ))
            .into());
        };
        let result = f(operator, &mut self.output);
        match result {
            Ok(_) => self.output.flush(),
            Err(_) => self.output.discard(),
        }
        result.map_err(Into::into)
    }
}

/// Where the one instance of an exported operator lives; implemented by
/// [`crate::export_operator!`].
pub trait Slot: 'static {
    /// The exported operator type.
    type Operator: Operator;

    /// The thread-local cell that holds the instance.
    fn instance() -> &'static LocalKey<RefCell<Instance<Self::Operator>>>;
}

fn with<S: Slot, R>(f: impl FnOnce(&mut Instance<S::Operator>) -> R) -> R {
    S::instance().with_borrow_mut(f)
}

impl<S: Slot> Guest for S {
    fn open(ctx: wit::Context) -> core::result::Result<(), wit::Error> {
        let operator = S::Operator::open(&Context::from(ctx))?;
        with::<S, _>(|instance| instance.operator = Some(operator));
        Ok(())
    }

    fn restore_state(state: Vec<u8>) -> core::result::Result<(), wit::Error> {
        with::<S, _>(|i| i.call("restore-state", |op, _| op.restore_state(state)))
    }

    fn process(batch: wit::Batch) -> core::result::Result<(), wit::Error> {
        let batch = Batch::from_raw(batch).map_err(Error::new)?;
        with::<S, _>(|i| i.call("process", |op, out| op.process(&batch, out)))
    }

    fn on_timer(timers: wit::FiredTimers) -> core::result::Result<(), wit::Error> {
        let timers = Timers::from_raw(timers).map_err(Error::new)?;
        with::<S, _>(|i| i.call("on-timer", |op, out| op.on_timer(&timers, out)))
    }

    fn on_watermark(watermark: i64) -> core::result::Result<(), wit::Error> {
        with::<S, _>(|i| i.call("on-watermark", |op, out| op.on_watermark(watermark, out)))
    }

    fn snapshot_state(checkpoint: CheckpointId) -> core::result::Result<Vec<u8>, wit::Error> {
        with::<S, _>(|i| i.call("snapshot-state", |op, _| op.snapshot_state(checkpoint)))
    }

    fn notify_checkpoint_complete(
        checkpoint: CheckpointId,
    ) -> core::result::Result<(), wit::Error> {
        with::<S, _>(|i| {
            i.call("notify-checkpoint-complete", |op, _| {
                op.notify_checkpoint_complete(checkpoint)
            })
        })
    }

    fn notify_checkpoint_aborted(checkpoint: CheckpointId) -> core::result::Result<(), wit::Error> {
        with::<S, _>(|i| {
            i.call("notify-checkpoint-aborted", |op, _| {
                op.notify_checkpoint_aborted(checkpoint)
            })
        })
    }

    fn close() -> core::result::Result<(), wit::Error> {
        // Dropping the operator releases its state handles; no call follows `close`.
        let (result, operator) =
            with::<S, _>(|i| (i.call("close", |op, _| op.close()), i.operator.take()));
        drop(operator);
        result
    }
}

/// Exports an [`Operator`] type as the `weir:operator/handler` interface of the
/// component this crate builds to. Use it once, in the crate root of a `cdylib`.
///
/// It keeps one instance of the type per component instance (the host makes one per
/// subtask), made by [`Operator::open`] and dropped after [`Operator::close`]. A call
/// that arrives while no instance is open returns an [`Error`] instead of trapping.
///
/// Only a `wasm32` build exports anything; natively the macro just checks the type, so
/// the same crate still builds and links for unit tests and native benchmarks.
///
/// ```
/// use weir_sdk::{Batch, Context, Operator, Output, Result};
///
/// struct Identity;
///
/// impl Operator for Identity {
///     fn open(_ctx: &Context) -> Result<Self> {
///         Ok(Identity)
///     }
///
///     fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()> {
///         batch.iter().for_each(|record| out.emit(record));
///         Ok(())
///     }
/// }
///
/// weir_sdk::export_operator!(Identity);
/// ```
#[macro_export]
macro_rules! export_operator {
    ($operator:ty) => {
        const _: () = {
            struct __WeirExport;

            ::std::thread_local! {
                static __WEIR_INSTANCE: ::core::cell::RefCell<$crate::__private::Instance<$operator>> =
                    const { ::core::cell::RefCell::new($crate::__private::Instance::new()) };
            }

            impl $crate::__private::Slot for __WeirExport {
                type Operator = $operator;

                fn instance() -> &'static ::std::thread::LocalKey<
                    ::core::cell::RefCell<$crate::__private::Instance<$operator>>,
                > {
                    &__WEIR_INSTANCE
                }
            }

            // Only a wasm build exports the handler: a native build (unit tests, a
            // benchmark that links the crate) cannot link symbol names like
            // `weir:operator/handler@0.2.0#process` into a shared library.
            #[cfg(target_arch = "wasm32")]
            $crate::__bindings::export!(__WeirExport with_types_in $crate::__bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;

    fn empty() -> Batch {
        std::iter::empty::<crate::RecordRef<'_>>().collect()
    }

    impl Operator for Failing {
        fn open(_ctx: &Context) -> Result<Self> {
            Ok(Failing)
        }

        fn process(&mut self, _batch: &Batch, out: &mut Output) -> Result<()> {
            out.emit(crate::RecordRef::new(b"half-done"));
            Err(Error::new("broken"))
        }
    }

    #[test]
    fn a_call_before_open_is_an_error_that_names_the_method() {
        let mut instance = Instance::<Failing>::new();
        let error = instance
            .call("process", |op, out| op.process(&empty(), out))
            .err();
        assert!(error.is_some_and(|e| e.message.starts_with("`process` was called")));
    }

    #[test]
    fn records_emitted_by_a_failed_call_are_dropped_and_the_error_passed_on() {
        let mut instance = Instance {
            operator: Some(Failing),
            output: Output::new(),
        };
        let error = instance
            .call("process", |op, out| op.process(&empty(), out))
            .err();
        assert_eq!(error.map(|e| e.message), Some("broken".to_owned()));
        assert!(instance.output.is_empty());
    }
}
