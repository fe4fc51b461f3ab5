//! Logits processors and sampling warpers, in transformers' order (4.57
//! `_get_logits_processor`), each computing what its transformers class
//! computes, in f32 like torch does.
//!
//! Order: SequenceBias → (HammingDiversity, group beam search only, as in
//! 4.56) → RepetitionPenalty → NoRepeatNGram → NoBadWords → MinLength →
//! MinNewTokens → ForcedBOS → ForcedEOS → InfNanRemove →
//! ExponentialDecayLengthPenalty → SuppressTokens → SuppressTokensAtBegin →
//! (sampling only) Temperature → TopK → TopP → MinP → Typical → Epsilon → Eta
//! → (renormalize_logits) LogitNormalization.
//!
//! Processors act on one row at a time; every input they read (the row's
//! tokens, its length) is per row in transformers too, except Hamming
//! diversity, which receives the tokens earlier groups chose at this step.

use std::collections::{BTreeSet, HashMap};

use super::config::{GenerationConfig, Mode};
use super::math::{log_softmax, softmax};

/// One processor with its parameters.
#[derive(Clone, Debug)]
pub enum Processor {
    /// Adds biases to tokens that would complete a biased sequence (also NoBadWords with -inf).
    SequenceBias {
        single: Vec<(u32, f32)>,
        multi: Vec<(Vec<u32>, f32)>,
        /// The setting it comes from: `sequence_bias` or `bad_words_ids`.
        setting: &'static str,
    },
    HammingDiversity {
        penalty: f32,
    },
    RepetitionPenalty(f32),
    NoRepeatNGram(usize),
    MinLength {
        min_length: usize,
        eos: Vec<u32>,
    },
    MinNewTokens {
        prompt_len: usize,
        min_new_tokens: usize,
        eos: Vec<u32>,
    },
    ForcedBos(u32),
    ForcedEos {
        max_length: usize,
        eos: Vec<u32>,
    },
    InfNanRemove,
    ExponentialDecay {
        start: usize,
        factor: f32,
        eos: Vec<u32>,
    },
    Suppress(Vec<u32>),
    SuppressAtBegin {
        tokens: Vec<u32>,
        begin_index: usize,
    },
    Temperature(f32),
    TopK {
        k: usize,
        min_keep: usize,
    },
    TopP {
        p: f32,
        min_keep: usize,
    },
    MinP {
        p: f32,
        min_keep: usize,
    },
    Typical {
        mass: f32,
        min_keep: usize,
    },
    Epsilon {
        epsilon: f32,
        min_keep: usize,
    },
    Eta {
        epsilon: f32,
        min_keep: usize,
    },
    LogNormalize,
}

/// The processors of one generate() call.
#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    pub processors: Vec<Processor>,
}

/// Lengths and limits that fix the pipeline (known once the prompt is tokenized).
pub struct PipelineLimits {
    /// Padded prompt length.
    pub prompt_len: usize,
    pub max_length: usize,
    pub min_length: usize,
}

impl Pipeline {
    /// Builds the pipeline for `config` as transformers does.
    pub fn new(config: &GenerationConfig, limits: &PipelineLimits) -> Pipeline {
        let eos = config.eos();
        let mode = config.mode();
        let mut p = Vec::new();
        if let Some(bias) = &config.sequence_bias {
            p.push(sequence_bias(bias.iter().map(|(ids, b)| (ids.clone(), *b)), "sequence_bias"));
        }
        if mode == Mode::GroupBeamSearch && config.diversity_penalty > 0.0 {
            p.push(Processor::HammingDiversity { penalty: config.diversity_penalty });
        }
        if config.repetition_penalty != 1.0 {
            p.push(Processor::RepetitionPenalty(config.repetition_penalty));
        }
        if config.no_repeat_ngram_size > 0 {
            p.push(Processor::NoRepeatNGram(config.no_repeat_ngram_size));
        }
        if let Some(words) = &config.bad_words_ids {
            // EOS alone is never banned.
            let kept = words.iter().filter(|w| !(w.len() == 1 && eos.contains(&w[0])));
            p.push(sequence_bias(kept.map(|w| (w.clone(), f32::NEG_INFINITY)), "bad_words_ids"));
        }
        if !eos.is_empty() && limits.min_length > 0 {
            p.push(Processor::MinLength { min_length: limits.min_length, eos: eos.clone() });
        }
        if let Some(n) = config.min_new_tokens.filter(|&n| n > 0 && !eos.is_empty()) {
            p.push(Processor::MinNewTokens { prompt_len: limits.prompt_len, min_new_tokens: n, eos: eos.clone() });
        }
        if let Some(bos) = config.forced_bos_token_id {
            p.push(Processor::ForcedBos(bos));
        }
        if let Some(forced) = &config.forced_eos_token_id {
            p.push(Processor::ForcedEos { max_length: limits.max_length, eos: forced.to_vec() });
        }
        if config.remove_invalid_values {
            p.push(Processor::InfNanRemove);
        }
        if let Some((start, factor)) = config.exponential_decay_length_penalty {
            let start = start.saturating_add(limits.prompt_len);
            p.push(Processor::ExponentialDecay { start, factor, eos: eos.clone() });
        }
        if let Some(tokens) = &config.suppress_tokens {
            p.push(Processor::Suppress(tokens.clone()));
        }
        if let Some(tokens) = &config.begin_suppress_tokens {
            let shift = (limits.prompt_len <= 1 && config.forced_bos_token_id.is_some()) as usize;
            p.push(Processor::SuppressAtBegin { tokens: tokens.clone(), begin_index: limits.prompt_len + shift });
        }
        if config.do_sample {
            let min_keep = if config.num_beams > 1 { eos.len().max(1) + 1 } else { 1 };
            if config.temperature != 1.0 {
                p.push(Processor::Temperature(config.temperature));
            }
            if config.top_k != 0 {
                p.push(Processor::TopK { k: config.top_k, min_keep });
            }
            if config.top_p < 1.0 {
                p.push(Processor::TopP { p: config.top_p, min_keep });
            }
            if let Some(min_p) = config.min_p {
                p.push(Processor::MinP { p: min_p, min_keep });
            }
            if config.typical_p < 1.0 {
                p.push(Processor::Typical { mass: config.typical_p, min_keep });
            }
            if config.epsilon_cutoff > 0.0 && config.epsilon_cutoff < 1.0 {
                p.push(Processor::Epsilon { epsilon: config.epsilon_cutoff, min_keep });
            }
            if config.eta_cutoff > 0.0 && config.eta_cutoff < 1.0 {
                p.push(Processor::Eta { epsilon: config.eta_cutoff, min_keep });
            }
        }
        if config.renormalize_logits {
            p.push(Processor::LogNormalize);
        }
        Pipeline { processors: p }
    }

    /// Applies every processor to one row's `scores`; `tokens` is the row so
    /// far (padded prompt + generated); `earlier_groups` holds the tokens
    /// earlier beam groups chose at this step (group beam search).
    pub fn apply(&self, tokens: &[u32], scores: &mut [f32], earlier_groups: &[u32]) {
        for p in &self.processors {
            p.apply(tokens, scores, earlier_groups);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.processors.is_empty()
    }
}

/// SequenceBiasLogitsProcessor from (sequence, bias) pairs; later duplicates win, as in a dict.
fn sequence_bias(pairs: impl Iterator<Item = (Vec<u32>, f32)>, setting: &'static str) -> Processor {
    let mut order: Vec<Vec<u32>> = Vec::new();
    let mut map: HashMap<Vec<u32>, f32> = HashMap::new();
    for (ids, bias) in pairs {
        if !map.contains_key(&ids) {
            order.push(ids.clone());
        }
        map.insert(ids, bias);
    }
    let mut single = Vec::new();
    let mut multi = Vec::new();
    for ids in order {
        let bias = map[&ids];
        match ids.as_slice() {
            [t] => single.push((*t, bias)),
            _ => multi.push((ids, bias)),
        }
    }
    Processor::SequenceBias { single, multi, setting }
}

fn set(scores: &mut [f32], ids: &[u32], value: f32) {
    for &t in ids {
        if let Some(s) = scores.get_mut(t as usize) {
            *s = value;
        }
    }
}

/// Indices of `scores` sorted by value, descending, lower index first on ties.
fn order_desc(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// The k-th largest value (k ≥ 1).
fn kth_largest(scores: &[f32], k: usize) -> f32 {
    let mut v = scores.to_vec();
    let k = k.clamp(1, v.len());
    let (_, kth, _) = v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    *kth
}

/// Masks tokens to -inf where `remove` says so, but never the `min_keep` best-scored ones.
fn mask_keeping_top(scores: &mut [f32], remove: &[bool], min_keep: usize) {
    let threshold = kth_largest(scores, min_keep.min(scores.len()));
    for (s, &r) in scores.iter_mut().zip(remove) {
        // transformers keeps the top-k by comparing with the k-th value (ties kept).
        if r && *s < threshold {
            *s = f32::NEG_INFINITY;
        }
    }
}

impl Processor {
    /// The generation setting this processor comes from (what an error names).
    pub fn setting(&self) -> &'static str {
        match self {
            Processor::SequenceBias { setting, .. } => setting,
            Processor::HammingDiversity { .. } => "diversity_penalty",
            Processor::RepetitionPenalty(_) => "repetition_penalty",
            Processor::NoRepeatNGram(_) => "no_repeat_ngram_size",
            Processor::MinLength { .. } => "min_length",
            Processor::MinNewTokens { .. } => "min_new_tokens",
            Processor::ForcedBos(_) => "forced_bos_token_id",
            Processor::ForcedEos { .. } => "forced_eos_token_id",
            Processor::InfNanRemove => "remove_invalid_values",
            Processor::ExponentialDecay { .. } => "exponential_decay_length_penalty",
            Processor::Suppress(_) => "suppress_tokens",
            Processor::SuppressAtBegin { .. } => "begin_suppress_tokens",
            Processor::Temperature(_) => "temperature",
            Processor::TopK { .. } => "top_k",
            Processor::TopP { .. } => "top_p",
            Processor::MinP { .. } => "min_p",
            Processor::Typical { .. } => "typical_p",
            Processor::Epsilon { .. } => "epsilon_cutoff",
            Processor::Eta { .. } => "eta_cutoff",
            Processor::LogNormalize => "renormalize_logits",
        }
    }

    pub(crate) fn apply(&self, tokens: &[u32], scores: &mut [f32], earlier_groups: &[u32]) {
        let cur_len = tokens.len();
        match self {
            Processor::SequenceBias { single, multi, .. } => {
                let mut bias: HashMap<u32, f32> = HashMap::new();
                for &(t, b) in single {
                    bias.insert(t, b);
                }
                for (ids, b) in multi {
                    if ids.len() > cur_len {
                        continue;
                    }
                    let (prefix, last) = ids.split_at(ids.len() - 1);
                    if tokens.ends_with(prefix) {
                        *bias.entry(last[0]).or_insert(0.0) += *b;
                    }
                }
                for (t, b) in bias {
                    if let Some(s) = scores.get_mut(t as usize) {
                        *s += b;
                    }
                }
            }
            Processor::HammingDiversity { penalty } => {
                let mut counts: HashMap<u32, u32> = HashMap::new();
                for &t in earlier_groups {
                    *counts.entry(t).or_insert(0) += 1;
                }
                for (t, n) in counts {
                    if let Some(s) = scores.get_mut(t as usize) {
                        *s -= penalty * n as f32;
                    }
                }
            }
            Processor::RepetitionPenalty(p) => {
                let seen: BTreeSet<u32> = tokens.iter().copied().collect();
                for t in seen {
                    if let Some(s) = scores.get_mut(t as usize) {
                        *s = if *s < 0.0 { *s * p } else { *s / p };
                    }
                }
            }
            Processor::NoRepeatNGram(n) => {
                let n = *n;
                if cur_len + 1 < n {
                    return;
                }
                let prefix = &tokens[cur_len + 1 - n..];
                let banned: Vec<u32> = tokens.windows(n).filter(|w| &w[..n - 1] == prefix).map(|w| w[n - 1]).collect();
                set(scores, &banned, f32::NEG_INFINITY);
            }
            Processor::MinLength { min_length, eos } => {
                if cur_len < *min_length {
                    set(scores, eos, f32::NEG_INFINITY);
                }
            }
            Processor::MinNewTokens { prompt_len, min_new_tokens, eos } => {
                if cur_len.saturating_sub(*prompt_len) < *min_new_tokens {
                    set(scores, eos, f32::NEG_INFINITY);
                }
            }
            Processor::ForcedBos(bos) => {
                if cur_len == 1 {
                    scores.fill(f32::NEG_INFINITY);
                    set(scores, &[*bos], 0.0);
                }
            }
            Processor::ForcedEos { max_length, eos } => {
                if cur_len + 1 == *max_length {
                    scores.fill(f32::NEG_INFINITY);
                    set(scores, eos, 0.0);
                }
            }
            Processor::InfNanRemove => {
                for s in scores.iter_mut() {
                    if s.is_nan() {
                        *s = 0.0;
                    } else if *s == f32::INFINITY {
                        *s = f32::MAX;
                    } else if *s == f32::NEG_INFINITY {
                        *s = f32::MIN;
                    }
                }
            }
            Processor::ExponentialDecay { start, factor, eos } => {
                if cur_len > *start {
                    let idx = i32::try_from(cur_len - start).unwrap_or(i32::MAX);
                    let scale = (f64::from(*factor).powi(idx) - 1.0) as f32;
                    for &t in eos {
                        if let Some(s) = scores.get_mut(t as usize) {
                            *s += s.abs() * scale;
                        }
                    }
                }
            }
            Processor::Suppress(ids) => set(scores, ids, f32::NEG_INFINITY),
            Processor::SuppressAtBegin { tokens: ids, begin_index } => {
                if cur_len == *begin_index {
                    set(scores, ids, f32::NEG_INFINITY);
                }
            }
            Processor::Temperature(t) => scores.iter_mut().for_each(|s| *s /= t),
            Processor::TopK { k, min_keep } => {
                let k = (*k).max(*min_keep).min(scores.len());
                let threshold = kth_largest(scores, k);
                scores.iter_mut().filter(|s| **s < threshold).for_each(|s| *s = f32::NEG_INFINITY);
            }
            Processor::TopP { p, min_keep } => {
                // Ascending sort; drop the low tail whose cumulative probability is ≤ 1 - p.
                // Masked (-inf) tokens come first in that order with probability exactly 0: they
                // stay masked, so only the others are sorted (after top-k, a few dozen of 50k).
                let live: Vec<f32> = scores.iter().copied().filter(|&s| s != f32::NEG_INFINITY).collect();
                let masked = scores.len() - live.len();
                let order = order_desc(&live);
                let live_index: Vec<usize> =
                    scores.iter().enumerate().filter(|(_, s)| **s != f32::NEG_INFINITY).map(|(i, _)| i).collect();
                let asc: Vec<usize> = order.iter().rev().map(|&j| live_index[j]).collect();
                let sorted: Vec<f32> = asc.iter().map(|&i| scores[i]).collect();
                let probs = softmax(&sorted);
                let mut cumulative = 0.0f32;
                let keep_from = scores.len().saturating_sub(*min_keep);
                let mut remove = Vec::new();
                for (rank, (&i, q)) in asc.iter().zip(probs).enumerate() {
                    cumulative += q;
                    if cumulative <= 1.0 - p && masked + rank < keep_from {
                        remove.push(i);
                    }
                }
                set(scores, &remove.iter().map(|&i| i as u32).collect::<Vec<_>>(), f32::NEG_INFINITY);
            }
            Processor::MinP { p, min_keep } => {
                let probs = softmax(scores);
                let top = probs.iter().copied().fold(0.0f32, f32::max);
                let remove: Vec<bool> = probs.iter().map(|&q| q < p * top).collect();
                mask_keeping_top(scores, &remove, *min_keep);
            }
            Processor::Typical { mass, min_keep } => {
                let logp = log_softmax(scores);
                let entropy: f32 = -logp.iter().map(|&l| if l.is_finite() { l * l.exp() } else { 0.0 }).sum::<f32>();
                let shifted: Vec<f32> = logp.iter().map(|&l| (-l - entropy).abs()).collect();
                let mut order: Vec<usize> = (0..scores.len()).collect();
                order.sort_by(|&a, &b| shifted[a].total_cmp(&shifted[b]).then(a.cmp(&b)));
                let sorted_logits: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
                let probs = softmax(&sorted_logits);
                let mut cumulative = 0.0f32;
                let mut last = 0usize;
                for q in &probs {
                    cumulative += q;
                    if cumulative < *mass {
                        last += 1;
                    }
                }
                let last = last.min(order.len().saturating_sub(1));
                let Some(&at) = order.get(last) else { return };
                let cut = shifted[at];
                let remove: Vec<u32> = order
                    .iter()
                    .enumerate()
                    .filter(|&(rank, &i)| rank >= *min_keep && shifted[i] > cut)
                    .map(|(_, &i)| i as u32)
                    .collect();
                set(scores, &remove, f32::NEG_INFINITY);
            }
            Processor::Epsilon { epsilon, min_keep } => {
                let probs = softmax(scores);
                let remove: Vec<bool> = probs.iter().map(|&q| q < *epsilon).collect();
                mask_keeping_top(scores, &remove, *min_keep);
            }
            Processor::Eta { epsilon, min_keep } => {
                let logp = log_softmax(scores);
                let entropy: f32 = -logp.iter().map(|&l| if l.is_finite() { l * l.exp() } else { 0.0 }).sum::<f32>();
                let eta = epsilon.min(epsilon.sqrt() * (-entropy).exp());
                let remove: Vec<bool> = logp.iter().map(|&l| l.exp() < eta).collect();
                mask_keeping_top(scores, &remove, *min_keep);
            }
            Processor::LogNormalize => {
                let l = log_softmax(scores);
                scores.copy_from_slice(&l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: Processor, tokens: &[u32], scores: &[f32]) -> Vec<f32> {
        let mut s = scores.to_vec();
        p.apply(tokens, &mut s, &[]);
        s
    }

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let out = run(Processor::RepetitionPenalty(2.0), &[0, 1, 1], &[4.0, -4.0, 3.0]);
        assert_eq!(out, vec![2.0, -8.0, 3.0]);
    }

    #[test]
    fn no_repeat_ngram_bans_continuations_of_the_last_prefix() {
        // Bigram (5, 7) seen; the row ends with 5, so 7 is banned.
        let out = run(Processor::NoRepeatNGram(2), &[5, 7, 2, 5], &[0.0; 8]);
        assert_eq!(out[7], NEG);
        assert_eq!(out.iter().filter(|s| **s == NEG).count(), 1);
        // Too short to have an n-gram yet.
        assert_eq!(run(Processor::NoRepeatNGram(3), &[1], &[0.0; 4]), vec![0.0; 4]);
    }

    #[test]
    fn sequence_bias_applies_single_and_completed_multi_token_biases() {
        let p = sequence_bias([(vec![2], 1.0), (vec![9, 3], -5.0), (vec![8, 3], 7.0)].into_iter(), "sequence_bias");
        let out = run(p, &[1, 9], &[0.0; 4]);
        assert_eq!(out, vec![0.0, 0.0, 1.0, -5.0]);
    }

    #[test]
    fn top_k_keeps_ties_at_the_boundary() {
        let out = run(Processor::TopK { k: 2, min_keep: 1 }, &[], &[1.0, 3.0, 2.0, 2.0, 0.0]);
        assert_eq!(out, vec![NEG, 3.0, 2.0, 2.0, NEG]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities ~ [0.643, 0.237, 0.087, 0.032]
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let out = run(Processor::TopP { p: 0.8, min_keep: 1 }, &[], &logits);
        assert_eq!(out, vec![3.0, 2.0, NEG, NEG]);
        let out = run(Processor::TopP { p: 0.5, min_keep: 1 }, &[], &logits);
        assert_eq!(out, vec![3.0, NEG, NEG, NEG]);
        let out = run(Processor::TopP { p: 0.5, min_keep: 3 }, &[], &logits);
        assert_eq!(out, vec![3.0, 2.0, 1.0, NEG]);
    }

    #[test]
    fn min_p_scales_with_the_top_probability() {
        let logits = [3.0f32, 2.0, 1.0, 0.0]; // p ~ [0.643, 0.237, 0.087, 0.032]
        let out = run(Processor::MinP { p: 0.2, min_keep: 1 }, &[], &logits);
        assert_eq!(out, vec![3.0, 2.0, NEG, NEG]);
    }

    #[test]
    fn forced_eos_and_min_length() {
        let out = run(Processor::ForcedEos { max_length: 4, eos: vec![1] }, &[5, 5, 5], &[0.5; 3]);
        assert_eq!(out, vec![NEG, 0.0, NEG]);
        let out = run(Processor::MinLength { min_length: 5, eos: vec![2] }, &[5, 5, 5], &[0.5; 3]);
        assert_eq!(out, vec![0.5, 0.5, NEG]);
    }
}
