//! Prompt lookup decoding (transformers' `prompt_lookup_num_tokens`): greedy search that drafts
//! the tokens which followed an earlier occurrence of the sequence's last n-gram, runs the drafts
//! through the model in one pass with the cache, keeps the longest prefix greedy search agrees
//! with, and drops the rest from the cache. Each kept token is the one plain greedy search picks
//! from that pass's logits, so the output is plain greedy's (up to the float rounding of a
//! multi-token pass against single steps, which matters only where two top logits nearly tie);
//! text that repeats its context takes several tokens per pass.
//!
//! The same loop drafts with an assistant model instead (transformers' `assistant_model`): a
//! smaller export with the same vocabulary proposes `num_assistant_tokens` greedy tokens from its
//! own cache, which is cut back to what the target kept.
//!
//! One prompt at a time, as transformers' assisted generation; the session must return every
//! position's logits (`LogitsScope::All`) and be able to drop cached positions.

use super::limits::MAX_DRAFT_TOKENS;
use super::math::{argmax, log_softmax_at};
use super::sample::processed_scores;
use super::{GenerateError, GenerationOutput, Plan, SequenceResult};
use crate::session::{DecoderSession, StepInput};

/// transformers' default `max_matching_ngram_size`.
const DEFAULT_NGRAM: usize = 2;

/// What proposes the tokens a verification pass checks.
pub(super) enum Drafter<'a> {
    /// n-grams of the sequence itself (`prompt_lookup_num_tokens`).
    PromptLookup { num: usize, max_ngram: usize },
    /// A smaller model's greedy tokens (`assistant_model`); `num` grows by 2 after a pass that kept
    /// every draft and shrinks by 1 otherwise with the heuristic schedule (transformers' rule).
    Assistant { session: &'a mut dyn DecoderSession, num: usize, heuristic: bool, confidence: f32 },
}

impl Drafter<'_> {
    /// The setting a problem with this drafter is reported under.
    fn field(&self) -> &'static str {
        match self {
            Drafter::PromptLookup { .. } => "prompt_lookup_num_tokens",
            Drafter::Assistant { .. } => "assistant_model",
        }
    }

    /// Up to `room` tokens to follow `tokens`.
    fn draft(&mut self, tokens: &[u32], room: usize, eos: &[u32]) -> Result<Vec<u32>, GenerateError> {
        match self {
            Drafter::PromptLookup { num, max_ngram } => Ok(draft(tokens, (*num).min(room), *max_ngram, eos)),
            Drafter::Assistant { session, num, confidence, .. } => {
                assistant_draft(&mut **session, tokens, (*num).min(room), *confidence)
            }
        }
    }

    /// After a pass over `drafted` tokens drafted on `before` tokens, of which `kept` were kept:
    /// the assistant's cache holds `before` and all but the last draft; keep what still matches.
    fn kept(&mut self, before: usize, drafted: usize, kept: usize) -> Result<(), GenerateError> {
        if let Drafter::Assistant { session, num, heuristic, .. } = self {
            if drafted > 0 {
                session.truncate(before + kept.min(drafted - 1))?;
            }
            if *heuristic && drafted > 0 {
                *num = if kept == drafted { (*num + 2).min(MAX_DRAFT_TOKENS) } else { num.saturating_sub(1).max(1) };
            }
        }
        Ok(())
    }
}

/// The assistant's greedy continuation of `tokens`, from its cache (which holds a prefix of them):
/// at most `num` tokens, ending early after a token whose probability is under `confidence`
/// (transformers' `assistant_confidence_threshold`).
fn assistant_draft(
    session: &mut dyn DecoderSession,
    tokens: &[u32],
    num: usize,
    confidence: f32,
) -> Result<Vec<u32>, GenerateError> {
    let mut drafts = Vec::with_capacity(num);
    let mut feed: Vec<u32> = tokens.get(session.past_len()..).unwrap_or_default().to_vec();
    while drafts.len() < num && !feed.is_empty() {
        let logits = session.forward(&RowFeed::new(&feed, session.past_len()).step())?;
        let row = logits.data.get(..logits.vocab).filter(|r| !r.is_empty()).ok_or_else(|| GenerateError::Config {
            field: "assistant_model".into(),
            message: "the assistant returned no logits".into(),
        })?;
        let token = argmax(row);
        drafts.push(token as u32);
        // The chosen token's probability: exp(its logit − logsumexp).
        let p = log_softmax_at(row, token).exp();
        if p < confidence {
            break;
        }
        feed = vec![token as u32];
    }
    Ok(drafts)
}

/// One unpadded row's step inputs: `feed` after `past` cached positions.
struct RowFeed {
    ids: Vec<i64>,
    mask: Vec<i64>,
    positions: Vec<i64>,
}

impl RowFeed {
    fn new(feed: &[u32], past: usize) -> RowFeed {
        RowFeed {
            ids: feed.iter().map(|&t| i64::from(t)).collect(),
            mask: vec![1; past + feed.len()],
            positions: (past..past + feed.len()).map(|p| p as i64).collect(),
        }
    }

    fn step(&self) -> StepInput<'_> {
        StepInput {
            rows: 1,
            seq: self.ids.len(),
            input_ids: &self.ids,
            attention_mask: &self.mask,
            position_ids: &self.positions,
        }
    }
}

fn setting_error(field: &str, message: impl Into<String>) -> GenerateError {
    GenerateError::Config { field: field.into(), message: message.into() }
}

/// Up to `num` tokens that followed the first earlier occurrence of the last n-gram of `tokens`
/// (longest n first, from `max_ngram` down to 1), cut before an EOS token: transformers'
/// `PromptLookupCandidateGenerator`, less its check of each draft against the logits processors
/// (a draft they forbid is simply not kept; replaying the processors over the vocabulary for
/// every draft costs more than the pass it might save).
fn draft(tokens: &[u32], num: usize, max_ngram: usize, eos: &[u32]) -> Vec<u32> {
    let len = tokens.len();
    for n in (1..=max_ngram.min(len.saturating_sub(1))).rev() {
        let tail = &tokens[len - n..];
        for start in 0..=len - n {
            if &tokens[start..start + n] != tail {
                continue;
            }
            let from = start + n;
            let to = (from + num).min(len);
            if from >= to {
                continue;
            }
            let chosen: Vec<u32> = tokens[from..to].iter().copied().take_while(|t| !eos.contains(t)).collect();
            if !chosen.is_empty() {
                return chosen;
            }
        }
    }
    Vec::new()
}

/// Prompt lookup's drafter for `plan`'s settings.
pub(super) fn prompt_lookup(plan: &Plan<'_>, num: usize) -> Drafter<'static> {
    Drafter::PromptLookup { num, max_ngram: plan.config.max_matching_ngram_size.unwrap_or(DEFAULT_NGRAM) }
}

pub(super) fn run(
    session: &mut dyn DecoderSession,
    prompts: &[Vec<u32>],
    plan: &Plan<'_>,
    drafter: &mut Drafter<'_>,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<GenerationOutput, GenerateError> {
    let field = drafter.field();
    let [prompt] = prompts else {
        return Err(setting_error(
            field,
            format!(
                "speculative decoding takes one prompt at a time ({} given), as transformers' assisted generation",
                prompts.len()
            ),
        ));
    };
    if !session.all_logits() {
        return Err(setting_error(
            field,
            "speculative decoding needs a session that returns every position's logits (LogitsScope::All)",
        ));
    }
    let mut tokens = prompt.clone();
    let mut logprobs = Vec::new();
    session.reset();
    if let Drafter::Assistant { session: assistant, .. } = drafter {
        assistant.reset();
    }
    // The cache holds every token but the last chosen one; `feed` is what the next pass runs: the
    // tokens not yet cached, the last `drafted` of them drafts.
    let (mut feed, mut drafted) = (prompt.clone(), 0);
    let finish = loop {
        let past = session.past_len();
        let all = session.forward_all(&RowFeed::new(&feed, past).step())?;
        if all.vocab != plan.vocab {
            return Err(GenerateError::VocabMismatch { got: all.vocab, expected: plan.vocab });
        }
        if all.rows != 1 || all.positions != feed.len() || all.data.len() != feed.len() * all.vocab {
            return Err(GenerateError::Runtime(crate::backend::RuntimeError::Input {
                name: "logits".into(),
                message: format!("[{}, {}, vocab], expected [1, {}, vocab]", all.rows, all.positions, feed.len()),
            }));
        }
        // Position `first` follows every accepted token; each later one follows one more draft.
        let first = feed.len() - drafted - 1;
        let drafts = &feed[first + 1..];
        let mut finished = None;
        let mut kept = 0;
        for i in 0..=drafted {
            let step = tokens.len() - prompt.len();
            let scores = processed_scores(plan, &tokens, all.at(0, first + i), 0, step, true)?;
            let token = argmax(&scores);
            tokens.push(token as u32);
            logprobs.push(log_softmax_at(&scores, token));
            on_token(0, token as u32);
            finished = plan.stopping.check(&tokens);
            if finished.is_some() || drafts.get(i) != Some(&(token as u32)) {
                break;
            }
            kept += 1;
        }
        if let Some(reason) = finished {
            break reason;
        }
        // Keep the accepted tokens and the drafts greedy search agreed with.
        session.truncate(past + first + 1 + kept)?;
        drafter.kept(past + first + 1, drafted, kept)?;
        let room = plan.max_length.saturating_sub(tokens.len() + 1);
        let next = drafter.draft(&tokens, room, &plan.eos)?;
        drafted = next.len();
        feed = tokens[tokens.len() - 1..].iter().copied().chain(next).collect();
    };
    let results = vec![SequenceResult {
        prompt: 0,
        tokens: tokens[prompt.len()..].to_vec(),
        finish_reason: finish,
        score: None,
        token_logprobs: logprobs,
    }];
    Ok(GenerationOutput { sequences: vec![tokens], prompt_len: prompt.len(), results, notices: Vec::new(), seed: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_follow_the_first_match_of_the_longest_ngram() {
        let t = &[1u32, 2, 3, 4, 5, 9, 3, 4, 6, 7, 3, 4];
        // "3 4" occurs at 2 and 6; the first one is followed by 5 9 3.
        assert_eq!(draft(t, 3, 2, &[]), vec![5, 9, 3]);
        // EOS cuts the draft.
        assert_eq!(draft(t, 3, 2, &[9]), vec![5]);
        // Drafts stop at the end of the sequence.
        assert_eq!(draft(&[7, 8, 7], 5, 2, &[]), vec![8, 7]);
        // No earlier match: nothing.
        assert_eq!(draft(&[1, 2, 3], 4, 2, &[]), Vec::<u32>::new());
    }
}
