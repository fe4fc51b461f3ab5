//! Group (diverse) beam search as transformers 4.56 computed it in-library
//! (`_group_beam_search` with `BeamSearchScorer`; 4.57 moved it out).
//!
//! `num_beams` beams form `num_beam_groups` groups of `num_beams /
//! num_beam_groups`. Each step the groups are processed in order; a group's
//! log-probabilities are lowered by `diversity_penalty × count` of each token
//! chosen by earlier groups at this step (Hamming diversity), then it runs a
//! beam step of its own: the top `max(2, 1 + n_eos) × group_size` candidates,
//! EOS candidates ranked within the group size become hypotheses (without the
//! EOS token; scored with the generated length including it), the rest keep
//! running. A group is done when its hypotheses are full and (per
//! `early_stopping`) cannot improve. At the end, running beams of unfinished
//! groups join the hypotheses, and the best across all groups are returned,
//! each shorter one followed by `eos_token_id[0]` and padding.

use super::config::EarlyStopping;
use super::guard::{blame, check_logits, scan};
use super::math::log_softmax;
use super::stopping::FinishReason;
use super::{GenerateError, GenerationOutput, Plan, SequenceResult};
use crate::session::DecoderSession;

/// `BeamHypotheses` of one (prompt, group).
struct Hypotheses {
    size: usize,
    length_penalty: f64,
    /// (score, tokens without EOS, ended by EOS)
    beams: Vec<(f64, Vec<u32>, bool)>,
    worst: f64,
}

impl Hypotheses {
    fn new(size: usize, length_penalty: f32) -> Self {
        Hypotheses { size, length_penalty: f64::from(length_penalty), beams: Vec::new(), worst: 1e9 }
    }

    fn add(&mut self, tokens: Vec<u32>, sum_logprobs: f64, generated_len: usize, eos: bool) {
        let score = sum_logprobs / (generated_len as f64).powf(self.length_penalty);
        if self.beams.len() < self.size || score > self.worst {
            self.beams.push((score, tokens, eos));
            if self.beams.len() > self.size {
                let mut order: Vec<(f64, usize)> = self.beams.iter().enumerate().map(|(i, b)| (b.0, i)).collect();
                order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                self.beams.remove(order[0].1);
                self.worst = order[1].0;
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    fn is_done(
        &self,
        best_sum_logprobs: f64,
        cur_len: usize,
        prompt_len: usize,
        early: EarlyStopping,
        max_length: usize,
    ) -> bool {
        if self.beams.len() < self.size {
            return false;
        }
        let attainable = |len: usize| best_sum_logprobs / (len as f64).powf(self.length_penalty);
        match early {
            EarlyStopping::True => true,
            EarlyStopping::False => self.worst >= attainable(cur_len - prompt_len),
            EarlyStopping::Never if self.length_penalty > 0.0 => self.worst >= attainable(max_length - prompt_len),
            EarlyStopping::Never => self.worst >= attainable(cur_len - prompt_len),
        }
    }
}

/// Candidates of one (prompt, group): the top `keep` of `group_size × vocab`, best first.
fn top_candidates(scores: &[f32], keep: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(keep);
    idx
}

pub(super) fn run(
    session: &mut dyn DecoderSession,
    prompts: &[Vec<u32>],
    plan: &Plan<'_>,
) -> Result<GenerationOutput, GenerateError> {
    let cfg = &plan.config;
    let (beams, groups) = (cfg.num_beams, cfg.num_beam_groups);
    let group_size = beams / groups;
    let batch = prompts.len();
    let prompt_len = plan.prompt_len;
    let keep = 2.max(1 + plan.eos.len()).saturating_mul(group_size);

    let mut rows = super::rows::Rows::new(prompts, 1, plan.pad, plan.vocab);
    let logits = rows.prefill(session)?;
    let expand: Vec<usize> = (0..batch).flat_map(|b| std::iter::repeat_n(b, beams)).collect();
    rows.select(&expand, session)?;
    let mut logits_rows: Vec<Vec<f32>> = expand.iter().map(|&b| logits.row(b).to_vec()).collect();

    // The first beam of each group starts at 0, the others at -1e9.
    let mut beam_scores: Vec<f32> = (0..batch * beams).map(|r| if r % group_size == 0 { 0.0 } else { -1e9 }).collect();
    let mut hyps: Vec<Hypotheses> =
        (0..batch * groups).map(|_| Hypotheses::new(group_size, cfg.length_penalty)).collect();
    let mut done = vec![false; batch * groups];

    loop {
        let cur_len = rows.cur_len();
        let step = cur_len - prompt_len;
        let vocab = plan.vocab;
        for (r, l) in logits_rows.iter().enumerate() {
            check_logits(l, cfg.remove_invalid_values, r, step)?;
        }
        let mut current = vec![0u32; batch * beams];
        let mut reorder = vec![0usize; batch * beams];
        for g in 0..groups {
            let start = g * group_size;
            let group_rows: Vec<usize> =
                (0..batch).flat_map(|b| (0..group_size).map(move |j| b * beams + start + j)).collect();
            let mut scores: Vec<Vec<f32>> = Vec::with_capacity(group_rows.len());
            for &r in &group_rows {
                let b = r / beams;
                let earlier = &current[b * beams..b * beams + start];
                let mut s = log_softmax(&logits_rows[r]);
                plan.pipeline.apply(&rows.tokens[r], &mut s, earlier);
                if scan(&s).invalid {
                    return Err(blame(&plan.pipeline, &rows.tokens[r], &log_softmax(&logits_rows[r]), earlier, step));
                }
                let base = beam_scores[r];
                s.iter_mut().for_each(|x| *x += base);
                scores.push(s);
            }
            // Slots no live candidate fills stay dead: score -inf, padding, following the group's first beam.
            let mut next_scores = vec![f32::NEG_INFINITY; batch * group_size];
            let mut next_tokens = vec![plan.pad; batch * group_size];
            let mut next_index: Vec<usize> = (0..batch * group_size).map(|slot| slot - slot % group_size).collect();
            for b in 0..batch {
                let bg = b * groups + g;
                if done[bg] {
                    // A finished group only pads (its rows follow index 0, as transformers does).
                    continue;
                }
                let flat: Vec<f32> = scores[b * group_size..(b + 1) * group_size].concat();
                let mut filled = 0;
                let candidates = top_candidates(&flat, keep);
                let best = candidates.first().map_or(f64::NEG_INFINITY, |&i| f64::from(flat[i]));
                if best == f64::NEG_INFINITY {
                    // Nothing left to continue with: done if the group has hypotheses, else an error.
                    if hyps[bg].beams.is_empty() {
                        let j =
                            (0..group_size).find(|&j| beam_scores[group_rows[b * group_size + j]] > f32::NEG_INFINITY);
                        let r = group_rows[b * group_size + j.unwrap_or(0)];
                        let earlier = &current[b * beams..b * beams + start];
                        return Err(blame(
                            &plan.pipeline,
                            &rows.tokens[r],
                            &log_softmax(&logits_rows[r]),
                            earlier,
                            step,
                        ));
                    }
                    done[bg] = true;
                    continue;
                }
                for (rank, &i) in candidates.iter().enumerate() {
                    if flat[i] == f32::NEG_INFINITY {
                        break; // sorted: every later candidate is dead too
                    }
                    let (beam, token) = (i / vocab, (i % vocab) as u32);
                    let source = b * group_size + beam;
                    if plan.eos.contains(&token) {
                        if rank >= group_size {
                            continue;
                        }
                        let tokens = rows.tokens[group_rows[source]].clone();
                        hyps[bg].add(tokens, f64::from(flat[i]), cur_len + 1 - prompt_len, true);
                    } else {
                        let slot = b * group_size + filled;
                        next_scores[slot] = flat[i];
                        next_tokens[slot] = token;
                        next_index[slot] = source;
                        filled += 1;
                    }
                    if filled == group_size {
                        break;
                    }
                }
                done[bg] =
                    done[bg] || hyps[bg].is_done(best, cur_len + 1, prompt_len, cfg.early_stopping, plan.max_length);
            }
            for (slot, &r) in group_rows.iter().enumerate() {
                beam_scores[r] = next_scores[slot];
                current[r] = next_tokens[slot];
                let source = next_index[slot];
                reorder[r] = beams * (source / group_size) + start + source % group_size;
            }
        }
        // Beams of one prompt hold the same cached prompt: only the generated positions move.
        rows.reorder(&reorder, prompt_len, session)?;
        rows.push(&current);
        let all_done = done.iter().all(|&d| d);
        let all_stopped = rows.tokens.iter().all(|t| plan.stopping.check(t).is_some());
        if all_done || all_stopped {
            break;
        }
        let logits = rows.step(session)?;
        logits_rows = (0..rows.len()).map(|r| logits.row(r).to_vec()).collect();
    }

    // Running beams of unfinished groups join their hypotheses.
    for (bg, h) in hyps.iter_mut().enumerate() {
        if done[bg] {
            continue;
        }
        let (b, g) = (bg / groups, bg % groups);
        for j in 0..group_size {
            let r = b * beams + g * group_size + j;
            let tokens = rows.tokens[r].clone();
            let generated = tokens.len() - prompt_len;
            h.add(tokens, f64::from(beam_scores[r]), generated, false);
        }
    }
    let eos0 = plan.eos.first().copied().unwrap_or(plan.pad);
    let mut best = Vec::new();
    for b in 0..batch {
        // Dead hypotheses (score -inf: a beam no live candidate continued) are never returned.
        let mut candidates: Vec<&(f64, Vec<u32>, bool)> = hyps[b * groups..(b + 1) * groups]
            .iter()
            .flat_map(|h| &h.beams)
            .filter(|h| h.0 > f64::NEG_INFINITY)
            .collect();
        candidates.sort_by(|x, y| x.0.total_cmp(&y.0));
        for _ in 0..cfg.num_return_sequences {
            if let Some(h) = candidates.pop() {
                best.push((b, h));
            }
        }
    }
    let longest = best.iter().map(|(_, h)| h.1.len()).max().unwrap_or(prompt_len);
    let width = (longest + 1).min(plan.max_length);
    let sequences = best
        .iter()
        .map(|(_, h)| {
            let mut s = vec![plan.pad; width.max(h.1.len())];
            s[..h.1.len()].copy_from_slice(&h.1);
            if h.1.len() < width {
                s[h.1.len()] = eos0;
            }
            s.truncate(width);
            s
        })
        .collect();
    let results = best
        .iter()
        .map(|&(b, h)| {
            let mut tokens = h.1[prompt_len..].to_vec();
            if h.2 {
                tokens.push(eos0);
            }
            SequenceResult {
                prompt: b,
                tokens,
                finish_reason: if h.2 { FinishReason::Eos } else { FinishReason::Length },
                score: Some(h.0 as f32),
                token_logprobs: Vec::new(),
            }
        })
        .collect();
    Ok(GenerationOutput { sequences, prompt_len, results, notices: Vec::new(), seed: None })
}
