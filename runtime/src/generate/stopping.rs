//! Stopping criteria (transformers' `_get_stopping_criteria`): maximum
//! length, EOS tokens, stop strings and a time budget, evaluated on a row's
//! whole token sequence after each step.

use std::collections::HashMap;
use std::time::Instant;

use crate::tokenizer::TextTokenizer;

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An EOS token was generated.
    Eos,
    /// `max_length` / `max_new_tokens` (or the model's context) was reached.
    Length,
    /// A stop string was generated.
    StopString,
    /// `max_time` ran out.
    Time,
}

/// Matches stop strings at the end of a token sequence, as `StopStringCriteria`
/// does: a stop string counts only when it overlaps the final token.
pub struct StopStrings<'t> {
    strings: Vec<Vec<u8>>,
    tokenizer: &'t TextTokenizer,
    bytes: std::cell::RefCell<HashMap<u32, Vec<u8>>>,
}

impl<'t> StopStrings<'t> {
    pub fn new(strings: &[String], tokenizer: &'t TextTokenizer) -> Self {
        StopStrings {
            strings: strings.iter().map(|s| s.as_bytes().to_vec()).collect(),
            tokenizer,
            bytes: Default::default(),
        }
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes.borrow_mut().entry(id).or_insert_with(|| self.tokenizer.token_bytes(id)).clone()
    }

    /// Whether some stop string ends within the last token of `tokens`.
    pub fn matches(&self, tokens: &[u32]) -> bool {
        let Some((&last, before)) = tokens.split_last() else { return false };
        let last_bytes = self.token_bytes(last);
        if last_bytes.is_empty() {
            return false;
        }
        let longest = self.strings.iter().map(Vec::len).max().unwrap_or(0);
        // Enough earlier bytes to hold any stop string that ends inside the last token.
        let mut window: Vec<u8> = Vec::new();
        for &t in before.iter().rev() {
            if window.len() >= longest {
                break;
            }
            let mut b = self.token_bytes(t);
            b.extend_from_slice(&window);
            window = b;
        }
        let last_start = window.len();
        window.extend_from_slice(&last_bytes);
        self.strings.iter().any(|s| {
            !s.is_empty()
                && window
                    .windows(s.len())
                    .enumerate()
                    .any(|(start, w)| w == s.as_slice() && start + s.len() > last_start)
        })
    }
}

/// Every criterion of one generate() call.
pub struct Stopping<'t> {
    pub max_length: usize,
    pub eos: Vec<u32>,
    pub stop_strings: Option<StopStrings<'t>>,
    /// When `max_time` runs out on `clock` (`None`: no limit, or one past what the clock can hold).
    pub deadline: Option<Instant>,
    pub clock: &'t dyn super::Clock,
}

impl Stopping<'_> {
    /// Whether a row with these tokens is done, and why.
    pub fn check(&self, tokens: &[u32]) -> Option<FinishReason> {
        if tokens.last().is_some_and(|t| self.eos.contains(t)) {
            return Some(FinishReason::Eos);
        }
        if self.stop_strings.as_ref().is_some_and(|s| s.matches(tokens)) {
            return Some(FinishReason::StopString);
        }
        if tokens.len() >= self.max_length {
            return Some(FinishReason::Length);
        }
        if self.deadline.is_some_and(|d| self.clock.now() >= d) {
            return Some(FinishReason::Time);
        }
        None
    }
}
