//! The rows of a generation batch: left-padded token sequences and their
//! attention masks, kept in step with the session's cache.
//!
//! Positions follow transformers: `position_ids = cumsum(attention_mask) - 1`,
//! with padding positions set to 1; each step appends a 1 to every row's
//! mask, also for rows that already finished.

use super::GenerateError;
use crate::backend::RuntimeError;
use crate::session::{DecoderSession, Logits, StepInput};

/// Token rows and masks of one batch.
pub(crate) struct Rows {
    pub tokens: Vec<Vec<u32>>,
    pub mask: Vec<Vec<i64>>,
    /// The vocabulary every logits row must cover.
    vocab: usize,
}

impl Rows {
    /// Left-pads `prompts` to a common length, each repeated `expand` times in a row.
    pub fn new(prompts: &[Vec<u32>], expand: usize, pad: u32, vocab: usize) -> Rows {
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut tokens = Vec::with_capacity(prompts.len() * expand);
        let mut mask = Vec::with_capacity(prompts.len() * expand);
        for p in prompts {
            let padding = width - p.len();
            let mut row = vec![pad; padding];
            row.extend_from_slice(p);
            let mut m = vec![0i64; padding];
            m.extend(std::iter::repeat_n(1i64, p.len()));
            for _ in 0..expand {
                tokens.push(row.clone());
                mask.push(m.clone());
            }
        }
        Rows { tokens, mask, vocab }
    }

    /// The session's logits, refused unless they hold one full vocabulary row per row.
    fn checked(&self, logits: Logits) -> Result<Logits, GenerateError> {
        if logits.vocab != self.vocab {
            return Err(GenerateError::VocabMismatch { got: logits.vocab, expected: self.vocab });
        }
        if logits.rows != self.len() || logits.data.len() != logits.rows.saturating_mul(logits.vocab) {
            return Err(GenerateError::Runtime(RuntimeError::Input {
                name: "logits".into(),
                message: format!(
                    "{} values for {} rows of {} tokens, expected {} rows",
                    logits.data.len(),
                    logits.rows,
                    logits.vocab,
                    self.len()
                ),
            }));
        }
        Ok(logits)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Current sequence length (the same for every row).
    pub fn cur_len(&self) -> usize {
        self.tokens.first().map_or(0, Vec::len)
    }

    fn positions(mask: &[i64], last: usize) -> impl Iterator<Item = i64> + '_ {
        let mut count = 0i64;
        let all: Vec<i64> = mask
            .iter()
            .map(|&m| {
                count += m;
                if m == 0 { 1 } else { count - 1 }
            })
            .collect();
        let start = all.len() - last;
        all.into_iter().skip(start)
    }

    /// Runs the whole prompt of every row through the session (empty cache).
    pub fn prefill(&self, session: &mut dyn DecoderSession) -> Result<Logits, GenerateError> {
        session.reset();
        let seq = self.cur_len();
        let ids: Vec<i64> = self.tokens.iter().flatten().map(|&t| i64::from(t)).collect();
        let mask: Vec<i64> = self.mask.iter().flatten().copied().collect();
        let positions: Vec<i64> = self.mask.iter().flat_map(|m| Self::positions(m, seq)).collect();
        let logits = session.forward(&StepInput {
            rows: self.len(),
            seq,
            input_ids: &ids,
            attention_mask: &mask,
            position_ids: &positions,
        })?;
        self.checked(logits)
    }

    /// Appends one token to every row (and a 1 to its mask).
    pub fn push(&mut self, next: &[u32]) {
        for ((row, m), &t) in self.tokens.iter_mut().zip(&mut self.mask).zip(next) {
            row.push(t);
            m.push(1);
        }
    }

    /// Runs every row's last token through the session.
    pub fn step(&self, session: &mut dyn DecoderSession) -> Result<Logits, GenerateError> {
        let ids: Vec<i64> = self.tokens.iter().map(|r| r.last().map_or(0, |&t| i64::from(t))).collect();
        let mask: Vec<i64> = self.mask.iter().flatten().copied().collect();
        let positions: Vec<i64> = self.mask.iter().flat_map(|m| Self::positions(m, 1)).collect();
        let logits = session.forward(&StepInput {
            rows: self.len(),
            seq: 1,
            input_ids: &ids,
            attention_mask: &mask,
            position_ids: &positions,
        })?;
        self.checked(logits)
    }

    /// Keeps rows in the given order, in step with the session's cache.
    pub fn select(&mut self, rows: &[usize], session: &mut dyn DecoderSession) -> Result<(), RuntimeError> {
        self.tokens = rows.iter().map(|&r| self.tokens[r].clone()).collect();
        self.mask = rows.iter().map(|&r| self.mask[r].clone()).collect();
        session.select_rows(rows)
    }

    /// [`select`](Rows::select) for a reordering among rows whose first `shared` positions are
    /// equal (beams of one prompt share the prompt's): the session copies only later positions.
    pub fn reorder(
        &mut self,
        rows: &[usize],
        shared: usize,
        session: &mut dyn DecoderSession,
    ) -> Result<(), RuntimeError> {
        self.tokens = rows.iter().map(|&r| self.tokens[r].clone()).collect();
        self.mask = rows.iter().map(|&r| self.mask[r].clone()).collect();
        session.reorder_rows(rows, shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_padding_and_positions() {
        let rows = Rows::new(&[vec![5, 6, 7], vec![8]], 2, 0, 10);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows.tokens[2], vec![0, 0, 8]);
        assert_eq!(rows.mask[3], vec![0, 0, 1]);
        let p: Vec<i64> = Rows::positions(&rows.mask[2], 3).collect();
        assert_eq!(p, vec![1, 1, 0]);
        let p: Vec<i64> = Rows::positions(&[0, 1, 1, 1], 1).collect();
        assert_eq!(p, vec![2]);
    }
}
