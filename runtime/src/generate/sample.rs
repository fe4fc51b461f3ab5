//! Greedy decoding and multinomial sampling (transformers' `_sample`): one
//! token per row per step; rows that finished receive `pad_token_id` until
//! every row is done.

use super::guard::{blame, check_logits, scan};
use super::math::{argmax, log_softmax_at, softmax};
use super::sampling::{Draw, Rng};
use super::stopping::FinishReason;
use super::{GenerateError, GenerationOutput, Mode, Plan, SequenceResult};
use crate::session::DecoderSession;

/// Row `row`'s logits after `tokens` through the processors; with `check`, refused when the model
/// gave non-finite logits or the processors left nothing to choose (naming what did it).
pub(super) fn processed_scores(
    plan: &Plan<'_>,
    tokens: &[u32],
    raw: &[f32],
    row: usize,
    step: usize,
    check: bool,
) -> Result<Vec<f32>, GenerateError> {
    let mut scores = raw.to_vec();
    plan.pipeline.apply(tokens, &mut scores, &[]);
    if check {
        check_logits(raw, plan.config.remove_invalid_values, row, step)?;
        let s = scan(&scores);
        if s.invalid || !s.live {
            return Err(blame(&plan.pipeline, tokens, raw, &[], step));
        }
    }
    Ok(scores)
}

pub(super) fn run(
    session: &mut dyn DecoderSession,
    prompts: &[Vec<u32>],
    plan: &Plan<'_>,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<GenerationOutput, GenerateError> {
    let expand = plan.config.num_return_sequences;
    let mut rows = super::rows::Rows::new(prompts, expand, plan.pad, plan.vocab);
    let n = rows.len();
    let sampling = plan.mode == Mode::Sample;
    let mut rng = Rng::new(plan.seed);
    let has_eos = !plan.eos.is_empty();
    let mut finished: Vec<Option<(FinishReason, usize)>> = vec![None; n];
    let mut logprobs: Vec<Vec<f32>> = vec![Vec::new(); n];

    let mut logits = rows.prefill(session)?;
    loop {
        let mut next = Vec::with_capacity(n);
        let step = rows.cur_len() - plan.prompt_len;
        for r in 0..n {
            // A finished row only pads: what its scores hold does not matter.
            let scores = processed_scores(plan, &rows.tokens[r], logits.row(r), r, step, finished[r].is_none())?;
            let token = if sampling {
                let probs = softmax(&scores);
                // Only a finished row can have nothing to draw; it takes padding below.
                rng.categorical(&probs).unwrap_or_else(|| argmax(&scores))
            } else {
                argmax(&scores)
            } as u32;
            let token = if finished[r].is_some() && has_eos { plan.pad } else { token };
            if finished[r].is_none() {
                logprobs[r].push(log_softmax_at(&scores, token as usize));
                on_token(r, token);
            }
            next.push(token);
        }
        rows.push(&next);
        let cur_len = rows.cur_len();
        for (r, done) in finished.iter_mut().enumerate() {
            if done.is_none() {
                *done = plan.stopping.check(&rows.tokens[r]).map(|reason| (reason, cur_len - plan.prompt_len));
            }
        }
        if finished.iter().all(Option::is_some) {
            break;
        }
        logits = rows.step(session)?;
    }

    let results = finished
        .iter()
        .enumerate()
        .map(|(r, f)| {
            let (reason, generated) = f.unwrap_or((FinishReason::Length, rows.cur_len() - plan.prompt_len));
            SequenceResult {
                prompt: r / expand,
                tokens: rows.tokens[r][plan.prompt_len..plan.prompt_len + generated].to_vec(),
                finish_reason: reason,
                score: None,
                token_logprobs: std::mem::take(&mut logprobs[r]),
            }
        })
        .collect();
    Ok(GenerationOutput {
        sequences: rows.tokens,
        prompt_len: plan.prompt_len,
        results,
        notices: Vec::new(),
        seed: None,
    })
}
