//! A member of the shared batch: the [`DecoderSession`] one generation call runs over.

use std::sync::mpsc;
use std::time::Duration;

use super::{Interrupt, MemberTag, Msg, Reply, Step};
use crate::backend::RuntimeError;
use crate::session::{AllLogits, DecoderSession, Logits, StepInput};

/// How often a member waiting for its pass looks at its interrupt.
const POLL: Duration = Duration::from_millis(20);

/// A session whose forward passes run in the scheduler's batch. Its rows leave the batch when it
/// is reset or dropped.
pub struct Member {
    id: u64,
    tx: mpsc::Sender<Msg>,
    interrupt: Interrupt,
    max_rows: usize,
    tag: MemberTag,
    rows: usize,
    past: usize,
}

fn input(name: &str, message: String) -> RuntimeError {
    RuntimeError::Input { name: name.into(), message }
}

fn stopped() -> RuntimeError {
    RuntimeError::Setting { field: "batch", message: "the scheduler has stopped".into() }
}

impl Member {
    pub(super) fn new(id: u64, tx: mpsc::Sender<Msg>, interrupt: Interrupt, max_rows: usize, tag: MemberTag) -> Member {
        Member { id, tx, interrupt, max_rows, tag, rows: 0, past: 0 }
    }

    fn check(&self, step: &StepInput<'_>) -> Result<(), RuntimeError> {
        if step.rows == 0 || step.seq == 0 {
            return Err(input("input_ids", "a pass needs at least one row and one token".into()));
        }
        if step.rows > self.max_rows {
            return Err(RuntimeError::Setting {
                field: "max_batch_rows",
                message: format!("a call needs {} rows; the batch holds at most {}", step.rows, self.max_rows),
            });
        }
        if self.past > 0 && step.rows != self.rows {
            return Err(input("input_ids", format!("{} rows but the cache holds {}", step.rows, self.rows)));
        }
        let total = self.past + step.seq;
        for (name, len, want) in [
            ("input_ids", step.input_ids.len(), step.rows * step.seq),
            ("attention_mask", step.attention_mask.len(), step.rows * total),
            ("position_ids", step.position_ids.len(), step.rows * step.seq),
        ] {
            if len != want {
                return Err(input(name, format!("{len} values, expected {want}")));
            }
        }
        Ok(())
    }
}

impl Member {
    /// Leaves the batch (and the prefill queue).
    fn reset_always(&mut self) {
        let _ = self.tx.send(Msg::Leave { id: self.id });
        self.rows = 0;
        self.past = 0;
    }
}

impl DecoderSession for Member {
    fn forward(&mut self, step: &StepInput<'_>) -> Result<Logits, RuntimeError> {
        self.interrupt.check()?;
        self.check(step)?;
        let (reply, answer) = mpsc::channel::<Reply>();
        let owned = Step {
            tag: self.tag.clone(),
            rows: step.rows,
            seq: step.seq,
            input_ids: step.input_ids.to_vec(),
            attention_mask: step.attention_mask.to_vec(),
            position_ids: step.position_ids.to_vec(),
        };
        self.tx.send(Msg::Forward { id: self.id, step: owned, reply }).map_err(|_| stopped())?;
        let logits = loop {
            match answer.recv_timeout(POLL) {
                Ok(result) => break result?,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.interrupt.check() {
                        // The pass may still run; its rows leave the batch with it.
                        self.reset_always();
                        return Err(e);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(stopped()),
            }
        };
        self.rows = step.rows;
        self.past += step.seq;
        Ok(logits)
    }

    fn forward_all(&mut self, _step: &StepInput<'_>) -> Result<AllLogits, RuntimeError> {
        Err(input("logits", "a batched session computes last-position logits only".into()))
    }

    fn select_rows(&mut self, rows: &[usize]) -> Result<(), RuntimeError> {
        if self.past == 0 {
            return Ok(());
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(input("cache", format!("row {r} out of range ({} rows)", self.rows)));
        }
        if rows.len() > self.max_rows {
            return Err(RuntimeError::Setting {
                field: "max_batch_rows",
                message: format!("a call needs {} rows; the batch holds at most {}", rows.len(), self.max_rows),
            });
        }
        let identity = rows.len() == self.rows && rows.iter().enumerate().all(|(i, &r)| i == r);
        if !identity {
            self.tx.send(Msg::Select { id: self.id, rows: rows.to_vec() }).map_err(|_| stopped())?;
            self.rows = rows.len();
        }
        Ok(())
    }

    fn past_len(&self) -> usize {
        self.past
    }

    fn reset(&mut self) {
        if self.past > 0 {
            self.reset_always();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Also a call still waiting for its prefill leaves the queue.
        let _ = self.tx.send(Msg::Leave { id: self.id });
    }
}
