//! Keyed timers and the clocks they run on, kept and checkpointed by the host.
//!
//! A timer belongs to a key; when its clock passes its time, the host calls
//! [`crate::Operator::on_timer`] with it. Registering the same key and time twice sets
//! one timer. All times are milliseconds since the Unix epoch.
//!
//! ```no_run
//! use weir_sdk::{TimeDomain, timers};
//!
//! // Close a one-minute window of the key `river` when event time passes its end.
//! let end = 60_000;
//! timers::register(TimeDomain::EventTime, b"river", end);
//! if timers::current_watermark().is_some_and(|w| w >= end) {
//!     timers::delete(TimeDomain::EventTime, b"river", end);
//! }
//! ```

use crate::__bindings::weir::operator::timers as wit;
use crate::TimeDomain;

/// Asks for [`crate::Operator::on_timer`] once `domain`'s clock passes `timestamp`, for
/// `key`.
///
/// ```no_run
/// let now = weir_sdk::timers::current_processing_time();
/// weir_sdk::timers::register(weir_sdk::TimeDomain::ProcessingTime, b"river", now + 10_000);
/// ```
pub fn register(domain: TimeDomain, key: &[u8], timestamp: i64) {
    wit::register(domain.into(), key, timestamp);
}

/// Registers one timer per `(key, timestamp)` pair, in one host call.
///
/// ```no_run
/// use weir_sdk::{TimeDomain, timers};
/// timers::register_many(TimeDomain::EventTime, [(&b"river"[..], 60_000), (b"weir", 60_000)]);
/// ```
pub fn register_many<'k>(domain: TimeDomain, timers: impl IntoIterator<Item = (&'k [u8], i64)>) {
    let mut keys = crate::batch::empty_blobs();
    let mut timestamps = Vec::new();
    for (key, timestamp) in timers {
        crate::batch::push(&mut keys, key);
        timestamps.push(timestamp);
    }
    if !timestamps.is_empty() {
        wit::register_many(domain.into(), &keys, &timestamps);
    }
}

/// Deletes a timer registered before; does nothing if there is none.
///
/// ```no_run
/// weir_sdk::timers::delete(weir_sdk::TimeDomain::EventTime, b"river", 60_000);
/// ```
pub fn delete(domain: TimeDomain, key: &[u8], timestamp: i64) {
    wit::delete(domain.into(), key, timestamp);
}

/// The current event-time watermark, if one has arrived yet.
///
/// ```no_run
/// let late = |timestamp: i64| weir_sdk::timers::current_watermark().is_some_and(|w| timestamp < w);
/// ```
pub fn current_watermark() -> Option<i64> {
    wit::current_watermark()
}

/// The host's wall clock.
///
/// ```no_run
/// let now_ms = weir_sdk::timers::current_processing_time();
/// ```
pub fn current_processing_time() -> i64 {
    wit::current_processing_time()
}
