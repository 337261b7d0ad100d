//! A pass-through operator against `weir:operator@0.1.0`, kept in `wit/` beside this
//! file exactly as that release shipped it: records crossed one by one as
//! `list<record>`. It exists so that a test can show what a user with a component of
//! that release sees. It is not an example to copy.

wit_bindgen::generate!({
    path: "wit",
    world: "operator",
});

use exports::weir::operator::handler::{Context, Error, Guest, Timer};
use weir::operator::types::Record;

struct Old;

impl Guest for Old {
    fn open(_ctx: Context) -> Result<(), Error> {
        Ok(())
    }
    fn restore_state(_state: Vec<u8>) -> Result<(), Error> {
        Ok(())
    }
    fn process(batch: Vec<Record>) -> Result<(), Error> {
        weir::operator::output::emit(&batch);
        Ok(())
    }
    fn on_timer(_timers: Vec<Timer>) -> Result<(), Error> {
        Ok(())
    }
    fn on_watermark(_watermark: i64) -> Result<(), Error> {
        Ok(())
    }
    fn snapshot_state(_checkpoint: u64) -> Result<Vec<u8>, Error> {
        Ok(Vec::new())
    }
    fn notify_checkpoint_complete(_checkpoint: u64) -> Result<(), Error> {
        Ok(())
    }
    fn notify_checkpoint_aborted(_checkpoint: u64) -> Result<(), Error> {
        Ok(())
    }
    fn close() -> Result<(), Error> {
        Ok(())
    }
}

export!(Old);
