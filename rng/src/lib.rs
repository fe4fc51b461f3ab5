//! The seeded random generator every part of gpt2c draws from — the runtime's
//! sampler, the compiler's `--random-init` and `gpt2c verify`'s random cases —
//! so the same seed gives the same values on every platform:
//! xoshiro256** seeded through splitmix64, uniform floats from its top 53
//! bits, and Box–Muller normals. (Seeded runs reproduce gpt2c's own values,
//! not torch's random stream.)

/// splitmix64's mixing step: one 64-bit value from another, well spread.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for one named stream (a tensor's values, say) from a run's seed, so the stream does not
/// depend on how many values the others drew.
pub fn stream_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(splitmix64(seed), |h, b| splitmix64(h ^ u64::from(b)))
}

/// xoshiro256**: small, fast and reproducible.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            let z = splitmix64(x);
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n` at least 1; 0 gives 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: the top bits of a 128-bit product are uniform enough for test inputs and
        // sampling indices, with no modulo bias worth a rejection loop at these sizes.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Standard normal draws (Box–Muller, both values of each pair used).
#[derive(Clone, Debug)]
pub struct Normal {
    rng: Rng,
    spare: Option<f64>,
}

impl Normal {
    pub fn new(seed: u64) -> Normal {
        Normal { rng: Rng::new(seed), spare: None }
    }

    pub fn sample(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // Uniforms in (0, 1], so the logarithm is finite.
        let (u, v) = (1.0 - self.rng.next_f64(), 1.0 - self.rng.next_f64());
        let r = (-2.0 * u.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * v;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first outputs for seed 0 as the reference algorithms give them: Vigna's splitmix64.c
    /// from state 0 fills xoshiro256**'s state, then its `next()` (values from a separate Python
    /// transcription of the reference C code).
    #[test]
    fn matches_the_reference_algorithms() {
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        let mut r = Rng::new(0);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(first, vec![0x99EC_5F36_CB75_F2B4, 0xBF6E_1F78_4956_452A, 0x1A5F_849D_4933_E6E0]);
    }

    #[test]
    fn uniforms_and_normals_have_their_moments() {
        let mut r = Rng::new(11);
        let n = 200_000;
        let us: Vec<f64> = (0..n).map(|_| r.next_f64()).collect();
        assert!(us.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = us.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        let mut g = Normal::new(7);
        let xs: Vec<f64> = (0..n).map(|_| g.sample()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.01, "mean {mean}, var {var}");
        let counts = (0..30_000).fold([0u32; 3], |mut c, _| {
            c[r.below(3) as usize] += 1;
            c
        });
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
        assert_eq!(Rng::new(5).below(0), 0);
    }

    #[test]
    fn named_streams_are_independent_of_each_other() {
        assert_ne!(stream_seed(7, "x"), stream_seed(7, "y"));
        assert_eq!(stream_seed(7, "x"), stream_seed(7, "x"));
        assert_ne!(stream_seed(7, "x"), stream_seed(8, "x"));
    }
}
