//! Logging into the host's log, where each line is tagged with the operator and subtask.
//!
//! The functions take a finished message; the macros ([`crate::info!`] and friends)
//! format one first, like `format!`.
//!
//! ```no_run
//! weir_sdk::log::info("opened");
//! weir_sdk::warn!("skipped {} records that are not UTF-8", 3);
//! ```

use crate::__bindings::weir::operator::log::{Level, write};

/// Logs `message` at trace level: very fine detail.
///
/// ```no_run
/// weir_sdk::log::trace("entering process");
/// ```
pub fn trace(message: &str) {
    write(Level::Trace, message);
}

/// Logs `message` at debug level: detail for debugging.
///
/// ```no_run
/// weir_sdk::log::debug("batch of 1000 records");
/// ```
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Logs `message` at info level: normal operation.
///
/// ```no_run
/// weir_sdk::log::info("opened");
/// ```
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Logs `message` at warn level: something looks wrong but processing goes on.
///
/// ```no_run
/// weir_sdk::log::warn("a record has no timestamp");
/// ```
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Logs `message` at error level: something failed.
///
/// ```no_run
/// weir_sdk::log::error("the lookup table is empty");
/// ```
pub fn error(message: &str) {
    write(Level::Error, message);
}

/// Formats a message and logs it at trace level; see [`log::trace`](crate::log::trace).
///
/// ```no_run
/// weir_sdk::trace!("record {} of {}", 1, 1000);
/// ```
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log::trace(&::std::format!($($arg)+)) };
}

/// Formats a message and logs it at debug level; see [`log::debug`](crate::log::debug).
///
/// ```no_run
/// weir_sdk::debug!("batch of {} records", 1000);
/// ```
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::debug(&::std::format!($($arg)+)) };
}

/// Formats a message and logs it at info level; see [`log::info`](crate::log::info).
///
/// ```no_run
/// weir_sdk::info!("opened subtask {} of {}", 0, 2);
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::info(&::std::format!($($arg)+)) };
}

/// Formats a message and logs it at warn level; see [`log::warn`](crate::log::warn).
///
/// ```no_run
/// weir_sdk::warn!("skipped {} records", 3);
/// ```
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::warn(&::std::format!($($arg)+)) };
}

/// Formats a message and logs it at error level; see [`log::error`](crate::log::error).
///
/// ```no_run
/// weir_sdk::error!("lookup of {:?} failed", "river");
/// ```
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::error(&::std::format!($($arg)+)) };
}
