//! The one `bindgen!` site of the host: Rust types and traits for the `operator` world
//! in `wit/`.
//!
//! Every import may trap (`trappable`), so that a host bug or an invalid resource handle
//! ends the guest instead of the host; errors the guest is meant to handle travel in the
//! WIT `result`s. The state resources are backed by the handle types of `host.rs`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "operator",
    imports: { default: trappable },
    with: {
        "weir:operator/state.value-state": super::host::ValueStateHandle,
        "weir:operator/state.list-state": super::host::ListStateHandle,
        "weir:operator/state.map-state": super::host::MapStateHandle,
    },
});

pub use self::weir::operator::types::{Context, Error as GuestError, Record, TimeDomain, Timer};

/// The export every operator must provide, as it appears in a component's type.
pub const HANDLER_EXPORT: &str = "weir:operator/handler@0.1.0";
