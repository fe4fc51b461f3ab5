//! Softmax, log-softmax and argmax over one row of scores (f32 values,
//! f64 accumulation; `-inf` entries get probability 0).

/// Probabilities of `scores`.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = max_of(scores);
    if max == f32::NEG_INFINITY {
        return vec![0.0; scores.len()];
    }
    let exps: Vec<f64> = scores.iter().map(|&s| exp_shifted(s, max)).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / total) as f32).collect()
}

/// `exp(s - max)`, computed in f32 as torch does (its error, ~1 ulp, is far below what sums in f64
/// keep), to be accumulated in f64; masked (`-inf`) scores, often all but a few after top-k, skip it.
fn exp_shifted(s: f32, max: f32) -> f64 {
    if s == f32::NEG_INFINITY { 0.0 } else { f64::from((s - max).exp()) }
}

/// Lanes for the reductions below: independent accumulators the compiler can keep in vector registers.
const LANES: usize = 8;

/// The largest score (`-inf` for none); NaN scores are skipped, as `f32::max` does.
fn max_of(scores: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = scores.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &s) in lanes.iter_mut().zip(c) {
            *m = if s > *m { s } else { *m };
        }
    }
    tail.iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `log Σ exp(s - max)` and `max` of `scores` (`None` when every score is `-inf`).
fn log_sum_exp(scores: &[f32]) -> Option<(f32, f32)> {
    let max = max_of(scores);
    if max == f32::NEG_INFINITY {
        return None;
    }
    let mut lanes = [0.0f64; LANES];
    let chunks = scores.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&s| exp_shifted(s, max)).sum();
    for c in chunks {
        for (acc, &s) in lanes.iter_mut().zip(c) {
            *acc += exp_shifted(s, max);
        }
    }
    Some((max, (lanes.iter().sum::<f64>() + tail).ln() as f32))
}

/// `log_softmax(scores)[index]`, without the whole vector.
pub fn log_softmax_at(scores: &[f32], index: usize) -> f32 {
    let Some(&s) = scores.get(index) else { return f32::NEG_INFINITY };
    match log_sum_exp(scores) {
        Some((max, lse)) => (s - max) - lse,
        None => s,
    }
}

/// Log-probabilities of `scores`: `(s - max) - log Σ exp(s - max)`.
pub fn log_softmax(scores: &[f32]) -> Vec<f32> {
    match log_sum_exp(scores) {
        Some((max, lse)) => scores.iter().map(|&s| (s - max) - lse).collect(),
        None => scores.to_vec(),
    }
}

/// [`log_softmax`] written into `out` (as long as `scores`).
pub fn log_softmax_into(scores: &[f32], out: &mut [f32]) {
    match log_sum_exp(scores) {
        Some((max, lse)) => out.iter_mut().zip(scores).for_each(|(o, &s)| *o = (s - max) - lse),
        None => out.copy_from_slice(scores),
    }
}

/// Index of the largest score; the lowest index wins ties (as torch.argmax).
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_log_softmax_agree() {
        let s = [1.0f32, 2.0, f32::NEG_INFINITY, 0.5];
        let p = softmax(&s);
        let l = log_softmax(&s);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(p[2], 0.0);
        for (a, b) in p.iter().zip(&l) {
            assert!((a.ln() - b).abs() < 1e-5 || (*a == 0.0 && *b == f32::NEG_INFINITY));
        }
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        for (i, want) in l.iter().enumerate() {
            assert_eq!(log_softmax_at(&s, i), *want);
        }
    }
}
