//! The one-writer-per-job lock: [`JobLock`], what a storage's
//! [`lock`](super::CheckpointStorage::lock) returns, and [`LockHolder`], the process it
//! names. Two processes writing one job's checkpoint directory would discard each
//! other's "incomplete" checkpoints and apply retention to each other's, so the second
//! is refused.
//!
//! How a storage holds the lock is its own:
//!
//! - **Files**: an advisory lock (`flock`) on `_lock`, which also holds the holder's
//!   description. The operating system releases it when the process dies, so a stale
//!   lock never blocks anyone.
//! - **S3** has no locks, so `_lock` is a *lease*: created only if absent, renewed three
//!   times per lease timeout (`[checkpointing.s3] lease-timeout`, default
//!   [`LEASE_TIMEOUT`]) while the job runs, and stale once the store's clock says it was
//!   not renewed for a timeout (the store's own clock on both sides, so clock skew
//!   between machines does not matter). A process that finds the lease held watches it:
//!   renewed, its holder is alive and the process is refused; not renewed for a
//!   timeout, the holder is gone and the lease is taken over. A holder that sees its
//!   lease replaced or deleted has lost it and stops the job; one that cannot reach the
//!   store keeps renewing (nobody can take the lease over through a store that is down).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

/// How long an S3 lease lives without renewal before another process may take it over,
/// by default (as Flink's leader-election lease). A process killed with its lease makes
/// the next start of its job wait about this long; shorter would let a process stalled
/// by a slow store lose its job.
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(15);

/// How often a lease of `timeout` is renewed: three times per timeout, so that two
/// renewals may fail (a slow store, a brief outage) before anyone may take it over.
pub fn lease_renewal(timeout: Duration) -> Duration {
    timeout / 3
}

/// The process that holds (or wants) a job's lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    /// For messages: "weir pid 4242 on host-a, started 2026-12-01 10:15:02.123 UTC".
    pub description: String,
    /// Unique to this process and lock: tells its own lease from another's.
    pub token: String,
}

impl LockHolder {
    /// This process.
    pub fn this_process() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "an unknown host".to_owned());
        let pid = std::process::id();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            description: format!(
                "weir pid {pid} on {host}, started {} UTC",
                crate::observe::utc_time(crate::runtime::now_ms())
            ),
            token: format!(
                "{pid}-{}-{}",
                now.as_nanos(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// The content of a lock file: the token on the first line, the description on
    /// the second.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        format!("{}\n{}\n", self.token, self.description).into_bytes()
    }

    /// The holder a lock file names; an unreadable one is described as such.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text.lines();
        let token = lines.next().unwrap_or_default().to_owned();
        let description = lines
            .next()
            .filter(|d| !d.is_empty())
            .unwrap_or("a process that did not say who it is")
            .to_owned();
        Self { description, token }
    }
}

/// Whether a lease of `timeout` last renewed at `renewed` is stale at `now`, both read
/// off the store's clock. A renewal "in the future" (a store whose clock went back) is
/// alive.
pub(crate) fn lease_is_stale(renewed: SystemTime, now: SystemTime, timeout: Duration) -> bool {
    now.duration_since(renewed).is_ok_and(|age| age > timeout)
}

/// What a storage keeps while it holds a job's lock.
#[async_trait]
pub(crate) trait LockGuard: Send + Sync {
    /// Gives the lock up.
    async fn release(self: Box<Self>);
}

/// A held job lock. Release it with [`release`](Self::release) when the job ends; one
/// dropped without it is released by the operating system (files) or expires (S3).
pub struct JobLock {
    guard: Box<dyn LockGuard>,
    lost: LostSignal,
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock")
            .field("lost", &self.lost())
            .finish_non_exhaustive()
    }
}

/// Says whether a [`JobLock`] was lost, from any thread.
#[derive(Clone, Debug, Default)]
pub struct LostSignal(Arc<Mutex<Option<String>>>);

impl LostSignal {
    /// Why the lock was lost, if it was.
    pub fn why(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that the lock was lost, and why.
    pub(crate) fn set(&self, why: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }
}

impl JobLock {
    /// A lock held through `guard`; `lost` is set if it is lost.
    pub(crate) fn new(guard: Box<dyn LockGuard>, lost: LostSignal) -> Self {
        Self { guard, lost }
    }

    /// Why this process no longer holds the lock, if it lost it.
    pub fn lost(&self) -> Option<String> {
        self.lost.why()
    }

    /// A handle that tells, from anywhere, whether the lock was lost.
    pub fn signal(&self) -> LostSignal {
        self.lost.clone()
    }

    /// Gives the lock up.
    pub async fn release(self) {
        self.guard.release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_reads_back_from_its_lock_file() {
        let holder = LockHolder::this_process();
        assert_eq!(LockHolder::from_bytes(&holder.to_bytes()), holder);
        assert!(holder.description.starts_with("weir pid "));
    }

    #[test]
    fn two_locks_of_one_process_have_different_tokens() {
        assert_ne!(
            LockHolder::this_process().token,
            LockHolder::this_process().token
        );
    }

    #[test]
    fn an_empty_lock_file_names_no_one_but_says_so() {
        let holder = LockHolder::from_bytes(b"");
        assert_eq!(holder.description, "a process that did not say who it is");
    }

    #[test]
    fn a_lease_is_stale_only_after_its_timeout() {
        let renewed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let timeout = LEASE_TIMEOUT;
        assert!(!lease_is_stale(renewed, renewed, timeout));
        assert!(!lease_is_stale(renewed, renewed + timeout, timeout));
        assert!(lease_is_stale(
            renewed,
            renewed + timeout + Duration::from_secs(1),
            timeout
        ));
        assert!(!lease_is_stale(
            renewed,
            renewed - Duration::from_secs(60),
            timeout
        ));
        assert_eq!(lease_renewal(timeout), Duration::from_secs(5));
    }
}
