//! The one `bindgen!` site of the host: Rust types and traits for the `operator` world
//! in `wit/`.
//!
//! Every import may trap (`trappable`), so that a host bug or an invalid resource handle
//! ends the guest instead of the host; errors the guest is meant to handle travel in the
//! WIT `result`s. The state resources are backed by the handle types of `host.rs`.
//!
//! Ownership is `Borrowing`: the arguments of calls into the guest (`process`'s batch,
//! `on-timer`'s timers) are generated as borrowed views (`BatchParam<'_>` over slices), so
//! the host lowers its own buffers without first copying them into owned values; what the
//! guest passes to the imports arrives owned and moves into the host's types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "operator",
    imports: { default: trappable },
    ownership: Borrowing { duplicate_if_necessary: true },
    with: {
        "weir:operator/state.value-state": super::host::ValueStateHandle,
        "weir:operator/state.list-state": super::host::ListStateHandle,
        "weir:operator/state.map-state": super::host::MapStateHandle,
    },
});

pub use self::weir::operator::types::{Error as GuestError, TimeDomain};

/// The version of the `weir:operator` package in `wit/`.
pub const CONTRACT_VERSION: &str = "0.2.0";

/// The export every operator must provide, as it appears in a component's type.
pub const HANDLER_EXPORT: &str = "weir:operator/handler@0.2.0";
