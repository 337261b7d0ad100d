//! A guest that misbehaves on purpose, for the tests of failure handling: restart
//! strategies, recovery from a checkpoint, and how the host reports a guest's fault.
//! It is not an example to copy.
//!
//! Between faults it is a keyed counter like the word-count counter, so a job has state
//! to recover: for every keyed record it adds one to the key's count in keyed state
//! (`ValueState<u64>` named `count`) and emits `"<key>\t<count>"`; records without a key
//! pass through unchanged.
//!
//! Its `config` is a JSON object (or empty) that names the faults, all optional:
//!
//! ```json
//! {"trap-on": "poison", "error-on": "bad", "once": true}
//! ```
//!
//! - `trap-on`: a record whose value is exactly this text makes the operator panic, a
//!   trap that loses the instance.
//! - `error-on`: a record whose value is exactly this text makes `process` return an
//!   [`Error`], a guest-visible failure that leaves the instance usable.
//! - `once` (default `false`): the faults fire only in an instance that was not restored
//!   from a checkpoint, so a job restarted from one gets past the poison record. With
//!   `false` they fire every time, and the job fails for good.
//!
//! Each fault is one [`Fault`]; hostile behaviours (an endless loop, a memory bomb)
//! join them as further variants.

use serde::Deserialize;
use weir_sdk::{Batch, Context, Error, Operator, Output, Result, ValueState};

/// The configuration as written in the job file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
struct Config {
    trap_on: Option<String>,
    error_on: Option<String>,
    once: bool,
}

/// One way to misbehave, and the record value that sets it off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Panic on a record with this value: a trap.
    Trap {
        /// The poison value.
        on: Vec<u8>,
    },
    /// Return an [`Error`] on a record with this value.
    Error {
        /// The poison value.
        on: Vec<u8>,
    },
}

impl Fault {
    /// Misbehaves if `value` is this fault's poison value.
    fn check(&self, value: &[u8]) -> Result<()> {
        match self {
            Fault::Trap { on } if on == value => panic!(
                "faulty: trapping on the record `{}`, as configured by `trap-on`",
                String::from_utf8_lossy(value)
            ),
            Fault::Error { on } if on == value => Err(Error::new(format!(
                "faulty: failing on the record `{}`, as configured by `error-on`",
                String::from_utf8_lossy(value)
            ))),
            Fault::Trap { .. } | Fault::Error { .. } => Ok(()),
        }
    }
}

/// The faults an instance commits: those configured, or none when `once` is set and the
/// instance was restored.
///
/// ```
/// use weir_sdk::Context;
///
/// let ctx = Context { config: r#"{"error-on": "bad"}"#.into(), ..Context::default() };
/// let faults = faulty::Faults::from_context(&ctx).unwrap();
/// assert!(faults.check(b"good").is_ok());
/// assert!(faults.check(b"bad").is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    faults: Vec<Fault>,
}

impl Faults {
    /// The faults `ctx`'s config asks for, given whether the instance was restored.
    pub fn from_context(ctx: &Context) -> Result<Self> {
        let config: Config = ctx.config_json()?;
        if config.once && ctx.restored {
            return Ok(Self::default());
        }
        let faults = [
            config.trap_on.map(|on| Fault::Trap {
                on: on.into_bytes(),
            }),
            config.error_on.map(|on| Fault::Error {
                on: on.into_bytes(),
            }),
        ];
        Ok(Self {
            faults: faults.into_iter().flatten().collect(),
        })
    }

    /// The configured faults, in the order they are checked.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// Misbehaves (panics or returns an error) if `value` sets off a fault.
    pub fn check(&self, value: &[u8]) -> Result<()> {
        self.faults.iter().try_for_each(|fault| fault.check(value))
    }
}

/// The operator: a keyed counter that commits the configured faults.
pub struct Faulty {
    faults: Faults,
    count: ValueState<u64>,
}

impl Operator for Faulty {
    fn open(ctx: &Context) -> Result<Self> {
        Ok(Self {
            faults: Faults::from_context(ctx)?,
            count: ValueState::open("count")?,
        })
    }

    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()> {
        for record in batch.iter() {
            self.faults.check(record.value)?;
            let Some(key) = record.key else {
                out.emit(record);
                continue;
            };
            let count = self.count.get(key)?.unwrap_or(0) + 1;
            self.count.set(key, &count)?;
            let value = format!("{}\t{count}", String::from_utf8_lossy(key));
            out.emit_with(Some(key), record.timestamp, |v| {
                v.extend_from_slice(value.as_bytes());
            });
        }
        Ok(())
    }
}

weir_sdk::export_operator!(Faulty);

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(config: &str, restored: bool) -> Result<Faults> {
        Faults::from_context(&Context {
            config: config.into(),
            restored,
            ..Context::default()
        })
    }

    fn traps(faults: &Faults, value: &[u8]) -> bool {
        std::panic::catch_unwind(|| faults.check(value)).is_err()
    }

    #[test]
    fn an_empty_config_commits_no_fault() {
        assert_eq!(faults("", false), Ok(Faults::default()));
    }

    #[test]
    fn the_trap_value_traps_and_others_pass() {
        let f = faults(r#"{"trap-on": "poison"}"#, false).expect("valid config");
        assert!(traps(&f, b"poison"));
        assert_eq!(f.check(b"poisoned"), Ok(()));
    }

    #[test]
    fn without_once_a_restored_instance_traps_again() {
        let f = faults(r#"{"trap-on": "poison"}"#, true).expect("valid config");
        assert!(traps(&f, b"poison"));
    }

    #[test]
    fn with_once_a_restored_instance_gets_past_the_poison_record() {
        let fresh = faults(r#"{"trap-on": "poison", "once": true}"#, false).expect("valid");
        assert!(traps(&fresh, b"poison"));
        let restored = faults(r#"{"trap-on": "poison", "once": true}"#, true).expect("valid");
        assert_eq!(restored.check(b"poison"), Ok(()));
    }

    #[test]
    fn the_error_value_returns_an_error_instead_of_trapping() {
        let f = faults(r#"{"error-on": "bad"}"#, false).expect("valid config");
        let error = f.check(b"bad").err().map(|e| e.message().to_owned());
        assert!(error.is_some_and(|m| m.contains("`bad`") && m.contains("error-on")));
        assert!(!traps(&f, b"good"));
    }

    #[test]
    fn both_faults_can_be_configured_together() {
        let f = faults(r#"{"trap-on": "t", "error-on": "e"}"#, false).expect("valid config");
        assert_eq!(
            f.faults(),
            [
                Fault::Trap { on: b"t".to_vec() },
                Fault::Error { on: b"e".to_vec() }
            ]
        );
    }

    #[test]
    fn an_unknown_config_field_is_an_error() {
        assert!(faults(r#"{"trap_on": "x"}"#, false).is_err());
    }
}
