//! A guest that keeps the latest value of every key in keyed state (`ValueState` named
//! `latest`) and emits, per record, the key and the length of the value it replaced.
//! With a generator's `keys` and `value-size` it makes state of any size, for the tests
//! and benchmarks of the state backends. It is not an example to copy.

use weir_sdk::{Batch, Context, Operator, Output, Result, ValueState};

/// The operator.
pub struct Latest {
    latest: ValueState<Vec<u8>>,
}

impl Operator for Latest {
    fn open(_ctx: &Context) -> Result<Self> {
        Ok(Self {
            latest: ValueState::open("latest")?,
        })
    }

    fn process(&mut self, batch: &Batch, out: &mut Output) -> Result<()> {
        for record in batch.iter() {
            let Some(key) = record.key else {
                continue;
            };
            let replaced = self.latest.get(key)?.map_or(0, |v| v.len());
            self.latest.set(key, &record.value.to_vec())?;
            let value = format!("{}\t{replaced}", String::from_utf8_lossy(key));
            out.emit_with(Some(key), record.timestamp, |v| {
                v.extend_from_slice(value.as_bytes());
            });
        }
        Ok(())
    }
}

weir_sdk::export_operator!(Latest);
