//! Seeded random choices for sampling, drawn from the workspace's one
//! generator (`gpt2c_rng`: xoshiro256** seeded through splitmix64), so the
//! same seed gives the same tokens on every platform. (Seeded runs are
//! reproducible within gpt2c; they do not reproduce torch's RNG.)

pub use gpt2c_rng::Rng;

/// Categorical draws over weights.
pub trait Draw {
    /// Draws an index with probability proportional to `weights` (zeros are never drawn);
    /// `None` when every weight is zero.
    fn categorical(&mut self, weights: &[f32]) -> Option<usize>;
    /// `n` distinct indices drawn without replacement (as torch.multinomial(replacement=False)),
    /// fewer when fewer weights are positive.
    fn categorical_distinct(&mut self, weights: &[f32], n: usize) -> Vec<usize>;
}

impl Draw for Rng {
    fn categorical(&mut self, weights: &[f32]) -> Option<usize> {
        let total: f64 = weights.iter().map(|&w| f64::from(w.max(0.0))).sum();
        if total.is_nan() || total <= 0.0 {
            return None;
        }
        let target = self.next_f64() * total;
        let mut acc = 0.0f64;
        let mut last_positive = None;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                acc += f64::from(w);
                last_positive = Some(i);
                if target < acc {
                    return Some(i);
                }
            }
        }
        last_positive
    }

    fn categorical_distinct(&mut self, weights: &[f32], n: usize) -> Vec<usize> {
        let mut w = weights.to_vec();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.categorical(&w) {
                Some(i) => {
                    out.push(i);
                    w[i] = 0.0;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws_and_zero_weights_never_drawn() {
        let w = [0.0f32, 0.5, 0.0, 0.25, 0.25];
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let da: Vec<_> = (0..200).map(|_| a.categorical(&w).unwrap()).collect();
        let db: Vec<_> = (0..200).map(|_| b.categorical(&w).unwrap()).collect();
        assert_eq!(da, db);
        assert!(da.iter().all(|&i| w[i] > 0.0));
        let ones = da.iter().filter(|&&i| i == 1).count();
        assert!((70..130).contains(&ones), "{ones}");
        let distinct = Rng::new(1).categorical_distinct(&w, 5);
        assert_eq!(distinct.len(), 3);
        assert_eq!(Rng::new(1).categorical(&[0.0, 0.0]), None);
    }
}
