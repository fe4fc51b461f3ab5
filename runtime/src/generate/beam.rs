//! Beam search and beam sampling, as transformers 4.57's vectorised
//! `_beam_search` computes them, per batch item:
//!
//! 1. `log_softmax(logits)` → processors → plus each beam's running score
//!    (beam 0 starts at 0, the others at -1e9);
//! 2. the top `K = max(2, 1 + n_eos) × num_beams` continuations over
//!    `num_beams × vocab` (drawn without replacement from the softmax when sampling);
//! 3. continuations that hit a stopping criterion (EOS, max length, stop
//!    string) become finished hypotheses if ranked below `num_beams`, scored
//!    `sum_logprobs / generated_len ** length_penalty`; the best `num_beams`
//!    finished ones are kept;
//! 4. the best `num_beams` others keep running; the cache follows them;
//! 5. early stopping: `True` stops once `num_beams` hypotheses are finished;
//!    `False` when the best running score can no longer beat the worst
//!    finished one at the current length; `"never"` the same at `max_length`
//!    when `length_penalty > 0`.
//!
//! Fewer live continuations than `K` (beam sampling whose top-k or top-p
//! leave few tokens, suppressed tokens, a tiny vocabulary): transformers
//! then draws arbitrary zero-probability continuations to fill `K`
//! (`torch.multinomial` without replacement) and carries their −inf scores.
//! Here the missing candidates are *dead*: score −inf, so they never outrank
//! a live one; a dead candidate may keep a beam slot running (its row is
//! padded) but never becomes a finished hypothesis, and hypotheses are
//! returned only when live, so a prompt can return fewer than
//! `num_return_sequences` sequences. A prompt with no live candidate and no
//! finished hypothesis is an error naming the setting that removed them.

use super::config::EarlyStopping;
use super::guard::{blame, check_logits, scan};
use super::math::{log_softmax, log_softmax_into, softmax};
use super::sampling::{Draw, Rng};
use super::stopping::FinishReason;
use super::{GenerateError, GenerationOutput, Mode, Plan, SequenceResult};
use crate::session::{DecoderSession, Logits};

const NEG: f32 = -1.0e9;

/// One finished-hypothesis slot.
#[derive(Clone)]
struct Finished {
    tokens: Vec<u32>,
    score: f32,
    done: bool,
    reason: FinishReason,
    /// A real hypothesis with a finite score (not an empty slot, not a dead continuation).
    live: bool,
}

/// A candidate continuation.
#[derive(Clone, Copy)]
struct Candidate {
    beam: usize,
    token: u32,
    score: f32,
}

/// Indices of the `k` largest values, largest first, earlier index first on ties.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    // One pass keeping the best k so far, best first: k is a few beams, values are beams × vocab.
    // Scanning in index order, an equal value never displaces an earlier index (lower index wins ties).
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    // The value to beat once `best` is full.
    let mut floor = None::<f32>;
    for (i, &v) in values.iter().enumerate() {
        if floor.is_some_and(|f| v.total_cmp(&f).is_le()) {
            continue;
        }
        let at = best.partition_point(|&w| values[w].total_cmp(&v).is_ge());
        best.insert(at, i);
        best.truncate(k);
        if best.len() == k {
            floor = best.last().map(|&w| values[w]);
        }
    }
    best
}

pub(super) fn run(
    session: &mut dyn DecoderSession,
    prompts: &[Vec<u32>],
    plan: &Plan<'_>,
) -> Result<GenerationOutput, GenerateError> {
    let cfg = &plan.config;
    let beams = cfg.num_beams;
    let batch = prompts.len();
    // transformers' K, never more than the beams × vocab continuations there are.
    let keep = 2.max(1 + plan.eos.len()).saturating_mul(beams).min(beams.saturating_mul(plan.vocab));
    let sampling = plan.mode == Mode::BeamSample;
    let mut rng = Rng::new(plan.seed);
    let prompt_len = plan.prompt_len;
    let lp = cfg.length_penalty;

    // Prefill each prompt once, then copy its cache into every beam.
    let mut rows = super::rows::Rows::new(prompts, 1, plan.pad, plan.vocab);
    let logits = rows.prefill(session)?;
    let expand: Vec<usize> = (0..batch).flat_map(|b| std::iter::repeat_n(b, beams)).collect();
    rows.select(&expand, session)?;
    // Each beam's logits; the first step's are its prompt's.
    let mut logits = Logits {
        rows: expand.len(),
        vocab: logits.vocab,
        data: expand.iter().flat_map(|&b| logits.row(b).iter().copied()).collect(),
    };
    // One prompt's beams × vocabulary scores, reused every step.
    let mut acc: Vec<f32> = Vec::new();

    let mut running_scores: Vec<Vec<f32>> =
        (0..batch).map(|_| (0..beams).map(|k| if k == 0 { 0.0 } else { NEG }).collect()).collect();
    let mut finished: Vec<Vec<Finished>> = (0..batch)
        .map(|b| {
            let slot = Finished {
                tokens: rows.tokens[b * beams].clone(),
                score: NEG,
                done: false,
                reason: FinishReason::Length,
                live: false,
            };
            vec![slot; beams]
        })
        .collect();
    let mut improvable = vec![true; batch];

    loop {
        let cur_len = rows.cur_len();
        let step = cur_len - prompt_len;
        let vocab = plan.vocab;
        let mut selected_rows = Vec::with_capacity(batch * beams);
        let mut next_tokens = Vec::with_capacity(batch * beams);
        let mut all_hit = true;
        for b in 0..batch {
            // Each beam's processed log-probabilities plus its running score, written in place
            // (rows in order, so the first bad row is the one reported).
            acc.resize(beams * vocab, 0.0);
            for (k, scores) in acc.chunks_exact_mut(vocab).enumerate() {
                let r = b * beams + k;
                let l = logits.row(r);
                check_logits(l, cfg.remove_invalid_values, r, step)?;
                log_softmax_into(l, scores);
                plan.pipeline.apply(&rows.tokens[r], scores, &[]);
                if scan(scores).invalid {
                    return Err(blame(&plan.pipeline, &rows.tokens[r], &log_softmax(l), &[], step));
                }
                let base = running_scores[b][k];
                scores.iter_mut().for_each(|s| *s += base);
            }
            let picked: Vec<usize> =
                if sampling { rng.categorical_distinct(&softmax(&acc), keep) } else { top_k(&acc, keep) };
            let mut candidates: Vec<Candidate> = picked
                .iter()
                .map(|&i| Candidate { beam: i / vocab, token: (i % vocab) as u32, score: acc[i] })
                .collect();
            // Too few continuations to draw from: the rest are dead (see the module's notes).
            candidates.resize(keep, Candidate { beam: 0, token: plan.pad, score: f32::NEG_INFINITY });
            if improvable[b] && candidates.iter().all(|c| c.score == f32::NEG_INFINITY) {
                if !finished[b].iter().any(|f| f.live) {
                    // Blame the processors on a beam that was still alive.
                    let k = (0..beams).find(|&k| running_scores[b][k] > f32::NEG_INFINITY).unwrap_or(0);
                    let r = b * beams + k;
                    return Err(blame(&plan.pipeline, &rows.tokens[r], &log_softmax(logits.row(r)), &[], step));
                }
                improvable[b] = false;
            }
            let hits: Vec<Option<FinishReason>> = candidates
                .iter()
                .map(|c| {
                    let mut seq = rows.tokens[b * beams + c.beam].clone();
                    seq.push(c.token);
                    plan.stopping.check(&seq)
                })
                .collect();
            all_hit &= hits.iter().all(Option::is_some);

            // Running beams for the next step: the best that did not stop.
            let adjusted: Vec<f32> =
                candidates.iter().zip(&hits).map(|(c, h)| c.score + if h.is_some() { NEG } else { 0.0 }).collect();
            let next = top_k(&adjusted, beams);

            // Finished hypotheses: merge the kept ones with those finishing now.
            let full = finished[b].iter().all(|f| f.done) && cfg.early_stopping == EarlyStopping::True;
            let denominator = ((cur_len + 1 - prompt_len) as f64).powf(f64::from(lp)) as f32;
            let mut merged_scores: Vec<f32> = finished[b].iter().map(|f| f.score).collect();
            for (rank, (c, h)) in candidates.iter().zip(&hits).enumerate() {
                let did_finish = h.is_some() && rank < beams && c.score > f32::NEG_INFINITY;
                let mut s = c.score / denominator;
                if full {
                    s += NEG;
                }
                if !improvable[b] {
                    s += NEG;
                }
                if !did_finish {
                    s += NEG;
                }
                merged_scores.push(s);
            }
            let chosen = top_k(&merged_scores, beams);
            finished[b] = chosen
                .iter()
                .map(|&i| {
                    if i < beams {
                        finished[b][i].clone()
                    } else {
                        let rank = i - beams;
                        let c = candidates[rank];
                        let mut tokens = rows.tokens[b * beams + c.beam].clone();
                        tokens.push(c.token);
                        Finished {
                            tokens,
                            score: merged_scores[i],
                            done: hits[rank].is_some() && rank < beams,
                            reason: hits[rank].unwrap_or(FinishReason::Length),
                            live: merged_scores[i] > f32::NEG_INFINITY,
                        }
                    }
                })
                .collect();

            running_scores[b] = next.iter().map(|&i| adjusted[i]).collect();
            for &i in &next {
                selected_rows.push(b * beams + candidates[i].beam);
                next_tokens.push(candidates[i].token);
            }
        }
        // Beams of one prompt hold the same cached prompt: only the generated positions move.
        rows.reorder(&selected_rows, prompt_len, session)?;
        rows.push(&next_tokens);
        let cur_len = rows.cur_len();

        for b in 0..batch {
            let length = match cfg.early_stopping {
                EarlyStopping::Never if lp > 0.0 => plan.max_length - prompt_len,
                _ => cur_len - prompt_len,
            };
            let best_possible = running_scores[b][0] / (length as f64).powf(f64::from(lp)) as f32;
            // A slot still open counts as -1e9; a finished one as the worst finished score.
            let worst = finished[b].iter().map(|f| f.score).fold(f32::INFINITY, f32::min);
            let can_improve = finished[b].iter().any(|f| best_possible > if f.done { worst } else { NEG });
            improvable[b] &= can_improve;
        }
        let improvement_possible = improvable.iter().any(|&i| i);
        let open = !(finished.iter().all(|f| f.iter().all(|s| s.done)) && cfg.early_stopping == EarlyStopping::True);
        if !(improvement_possible && open && !all_hit) {
            break;
        }
        logits = rows.step(session)?;
    }

    // The best `num_return_sequences` live hypotheses per prompt, padded to one length.
    // transformers fills with `pad_token_id or eos_token_id[0]` (a pad id of 0 reads as unset).
    let fill = if plan.pad == 0 { plan.eos.first().copied().unwrap_or(0) } else { plan.pad };
    let returned: Vec<(usize, &Finished)> = finished
        .iter()
        .enumerate()
        .flat_map(|(b, f)| f.iter().filter(|s| s.live).take(cfg.num_return_sequences).map(move |s| (b, s)))
        .collect();
    let longest = returned.iter().map(|(_, f)| f.tokens.len()).max().unwrap_or(prompt_len);
    let sequences = returned
        .iter()
        .map(|(_, f)| {
            let mut s = f.tokens.clone();
            s.resize(longest, fill);
            s
        })
        .collect();
    let results = returned
        .iter()
        .map(|&(b, f)| SequenceResult {
            prompt: b,
            tokens: f.tokens[prompt_len..].to_vec(),
            finish_reason: f.reason,
            score: Some(f.score),
            token_logprobs: Vec::new(),
        })
        .collect();
    Ok(GenerationOutput { sequences, prompt_len, results, notices: Vec::new(), seed: None })
}

#[cfg(test)]
mod tests {
    use super::top_k;

    /// The one-pass selection equals a full sort (value descending, lower index first on ties).
    #[test]
    fn top_k_matches_a_full_sort() {
        let mut x: u64 = 3;
        for len in [0usize, 1, 5, 64, 1000] {
            // Few distinct values, so ties are common; -inf included.
            let values: Vec<f32> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    match (x >> 33) % 9 {
                        0 => f32::NEG_INFINITY,
                        v => v as f32 * 0.5 - 2.0,
                    }
                })
                .collect();
            let mut sorted: Vec<usize> = (0..len).collect();
            sorted.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
            for k in [0usize, 1, 2, 8, 2000] {
                let want: Vec<usize> = sorted.iter().copied().take(k).collect();
                assert_eq!(top_k(&values, k), want, "len {len}, k {k}");
            }
        }
    }
}
