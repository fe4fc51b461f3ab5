//! Softmax, log-softmax and argmax over one row of scores (f32 values,
//! f64 accumulation; `-inf` entries get probability 0).

/// Probabilities of `scores`.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; scores.len()];
    }
    let exps: Vec<f64> = scores.iter().map(|&s| f64::from(s - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / total) as f32).collect()
}

/// Log-probabilities of `scores`: `(s - max) - log Σ exp(s - max)`.
pub fn log_softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return scores.to_vec();
    }
    let total: f64 = scores.iter().map(|&s| f64::from(s - max).exp()).sum();
    let lse = total.ln() as f32;
    scores.iter().map(|&s| (s - max) - lse).collect()
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
    }
}
