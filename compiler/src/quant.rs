//! Weight quantization arithmetic: symmetric int8 per channel, and 4-bit
//! blocks of 32 (the Q4_0 layout ONNX Runtime's `MatMulNBits` and ONNX's
//! blocked `DequantizeLinear` both express).
//!
//! All rounding is round-half-to-even (numpy's `round`, which ONNX Runtime's
//! quantization tools use); scales are f32 and a channel or block of zeros
//! gets scale 1 (int8) or 0 (int4) so nothing divides by zero.

/// int8 with one scale (and zero point) per channel: `w ≈ (q - zero_point) × scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8PerChannel {
    /// Row-major values, same layout as the input.
    pub values: Vec<i8>,
    /// One scale per channel.
    pub scales: Vec<f32>,
    /// One zero point per channel (all 0 when symmetric).
    pub zero_points: Vec<i8>,
}

/// `max |w| / 127` over the channel's values (1 for an all-zero channel).
fn int8_scale(values: impl Iterator<Item = f32>) -> f32 {
    let max_abs = values.fold(0f32, |m, x| m.max(x.abs()));
    if max_abs > 0.0 { max_abs / 127.0 } else { 1.0 }
}

fn to_int8(w: f32, scale: f32) -> i8 {
    (w / scale).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// Quantizes a row-major `[rows, cols]` matrix with one scale per column
/// (GPT-2's Conv1D `[in, out]` weights: one scale per output channel).
pub fn int8_per_column(w: &[f32], rows: usize, cols: usize) -> Int8PerChannel {
    let scales: Vec<f32> = (0..cols).map(|c| int8_scale((0..rows).map(|r| w[r * cols + c]))).collect();
    let values = w.iter().enumerate().map(|(i, &x)| to_int8(x, scales[i % cols])).collect();
    Int8PerChannel { values, scales, zero_points: vec![0; cols] }
}

/// Quantizes a row-major `[rows, cols]` matrix with one scale and one zero
/// point per row, mapping each row's [min, max] (widened to include 0) onto
/// [-128, 127]: `scale = (max - min) / 255`, `zero_point = round(-min / scale) - 128`,
/// `q = clamp(round(w / scale) + zero_point, -128, 127)`. This is the token
/// embedding's format: its rows are skewed, and an asymmetric range keeps
/// about a bit more precision than a symmetric one (which, measured on
/// tiny-trained, costs 20 times more perplexity).
pub fn int8_per_row_asymmetric(w: &[f32], rows: usize, cols: usize) -> Int8PerChannel {
    let mut values = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    let mut zero_points = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let min = row.iter().fold(0f32, |m, &x| m.min(x));
        let max = row.iter().fold(0f32, |m, &x| m.max(x));
        let scale = if max > min { (max - min) / 255.0 } else { 1.0 };
        let zp = ((-min / scale).round_ties_even() - 128.0).clamp(-128.0, 127.0);
        scales.push(scale);
        zero_points.push(zp as i8);
        values.extend(row.iter().map(|&x| ((x / scale).round_ties_even() + zp).clamp(-128.0, 127.0) as i8));
    }
    Int8PerChannel { values, scales, zero_points }
}

/// 4-bit values in blocks along K, for a `[K, N]` weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Blocks {
    pub k: usize,
    pub n: usize,
    pub block: usize,
    /// Signed values in [-8, 7], row-major `[K, N]`.
    pub values: Vec<i8>,
    /// `[K / block, N]` row-major.
    pub scales: Vec<f32>,
}

/// Quantizes a row-major `[k, n]` matrix in blocks of `block` along K (the
/// last block may be shorter): the block's value of largest magnitude `m`
/// gives `scale = m / -8`, so it maps to -8 exactly; values are
/// `clamp(round(w / scale), -8, 7)`.
pub fn int4_blocks(w: &[f32], k: usize, n: usize, block: usize) -> Int4Blocks {
    let blocks = k.div_ceil(block);
    let mut scales = vec![0f32; blocks * n];
    let mut values = vec![0i8; k * n];
    for b in 0..blocks {
        let rows = b * block..((b + 1) * block).min(k);
        for col in 0..n {
            let m = rows.clone().map(|r| w[r * n + col]).fold(0f32, |m, x| if x.abs() > m.abs() { x } else { m });
            let scale = m / -8.0;
            scales[b * n + col] = scale;
            for r in rows.clone() {
                let q = if scale == 0.0 { 0.0 } else { (w[r * n + col] / scale).round_ties_even().clamp(-8.0, 7.0) };
                values[r * n + col] = q as i8;
            }
        }
    }
    Int4Blocks { k, n, block, values, scales }
}

/// `MatMulNBits` inputs for a weight given as its `[N, K]` rows (a token table whose rows are the
/// LM head's columns): each row quantized in blocks of `block` along K as [`int4_blocks`] does,
/// packed as [`Int4Blocks::matmul_nbits`] packs them, without a transposed copy of the table.
pub fn int4_rows_matmul_nbits(w: &[f32], n: usize, k: usize, block: usize) -> (Vec<u8>, Vec<f32>) {
    if k == 0 || block == 0 {
        return (Vec::new(), Vec::new());
    }
    let blocks = k.div_ceil(block);
    let mut packed = Vec::with_capacity(n * blocks * block / 2);
    let mut scales = Vec::with_capacity(n * blocks);
    for row in w.chunks(k).take(n) {
        for b in 0..blocks {
            let part = &row[b * block..((b + 1) * block).min(k)];
            let m = part.iter().fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
            let scale = m / -8.0;
            scales.push(scale);
            // Positions past K (a short last block) are padding: stored as 8, which is zero.
            let nibble = |i: usize| match part.get(i) {
                Some(&x) if scale != 0.0 => ((x / scale).round_ties_even().clamp(-8.0, 7.0) as i8 + 8) as u8,
                _ => 8,
            };
            for pair in 0..block / 2 {
                packed.push(nibble(2 * pair) | (nibble(2 * pair + 1) << 4));
            }
        }
    }
    (packed, scales)
}

impl Int4Blocks {
    /// `MatMulNBits` inputs: B as uint8 `[N, K / block, block / 2]` (column n's
    /// K values, two per byte, low nibble first, stored with zero point 8) and
    /// scales `[N, K / block]`.
    pub fn matmul_nbits(&self) -> (Vec<u8>, Vec<f32>) {
        let blocks = self.k.div_ceil(self.block);
        let mut packed = Vec::with_capacity(self.n * blocks * self.block / 2);
        let mut scales = Vec::with_capacity(self.n * blocks);
        // Rows past K (a short last block) are padding: stored as 8, which is zero.
        let nibble = |r: usize, col: usize| if r < self.k { (self.values[r * self.n + col] + 8) as u8 } else { 8 };
        for col in 0..self.n {
            for b in 0..blocks {
                scales.push(self.scales[b * self.n + col]);
                for pair in 0..self.block / 2 {
                    let r = b * self.block + 2 * pair;
                    packed.push(nibble(r, col) | (nibble(r + 1, col) << 4));
                }
            }
        }
        (packed, scales)
    }

    /// ONNX INT4 raw data of the `[K, N]` values: two per byte, the first in the low nibble.
    pub fn onnx_int4(&self) -> Vec<u8> {
        self.values
            .chunks(2)
            .map(|pair| {
                let lo = (pair[0] as u8) & 0x0F;
                let hi = pair.get(1).map_or(0, |&v| (v as u8) & 0x0F);
                lo | (hi << 4)
            })
            .collect()
    }

    /// The dequantized `[K, N]` weight.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.k * self.n)
            .map(|i| {
                let (r, c) = (i / self.n, i % self.n);
                f32::from(self.values[i]) * self.scales[(r / self.block) * self.n + c]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_columns_round_half_to_even_with_exact_scales() {
        // Column 0: max 127 → scale 1, so values are rounded directly (2.5 → 2, 3.5 → 4, -0.5 → -0).
        // Column 1: max 254 → scale 2: 3 → 1.5 → 2, 1 → 0.5 → 0, 5 → 2.5 → 2 (ties to even).
        let w = [127.0f32, 3.0, 2.5, -254.0, 3.5, 1.0, -0.5, 5.0];
        let q = int8_per_column(&w, 4, 2);
        assert_eq!(q.scales, vec![1.0, 2.0]);
        assert_eq!(q.values, vec![127, 2, 2, -127, 4, 0, 0, 2]);
        let zeros = int8_per_column(&[0.0; 4], 2, 2);
        assert_eq!(zeros.scales, vec![1.0, 1.0]);
    }

    #[test]
    fn int8_rows_use_the_whole_range_of_each_row() {
        // Row 0 spans [0, 255] → scale 1, zero point -128: 0 → -128, 255 → 127, 100.5 → 100 (even) - 128.
        // Row 1 spans [-2, 0.55]: min -2, max 0.55 → scale 0.01, zero point round(200) - 128 = 72.
        let w = [0.0f32, 255.0, 100.5, -2.0, 0.55, 0.0];
        let q = int8_per_row_asymmetric(&w, 2, 3);
        assert_eq!(q.scales[0], 1.0);
        assert_eq!(q.zero_points, vec![-128, 72]);
        assert_eq!(&q.values[..3], &[-128, 127, -28]);
        // Dequantized: (q - zp) × scale reproduces the row's extremes and zero exactly.
        let s1 = q.scales[1];
        let back: Vec<f32> = q.values[3..].iter().map(|&v| f32::from(i16::from(v) - 72) * s1).collect();
        assert!((back[0] + 2.0).abs() < s1 / 2.0 + 1e-6 && (back[1] - 0.55).abs() < s1 / 2.0 + 1e-6);
        assert_eq!(q.values[5], 72, "zero maps to the zero point");
    }

    #[test]
    fn int4_blocks_map_the_extreme_to_minus_eight() {
        // One block of 4 (k = 4) for two columns.
        let w = [4.0f32, -1.0, -2.0, 0.0, 1.0, 0.5, -0.75, 8.0];
        let q = int4_blocks(&w, 4, 2, 4);
        assert_eq!(q.scales, vec![-0.5, -1.0]);
        // Column 0: 4/-0.5 = -8, -2/-0.5 = 4, 1/-0.5 = -2, -0.75/-0.5 = 1.5 → 2.
        // Column 1: -1/-1 = 1, 0, 0.5/-1 = -0.5 → -0, 8/-1 = -8.
        assert_eq!(q.values, vec![-8, 1, 4, 0, -2, 0, 2, -8]);
        assert_eq!(q.dequantize(), vec![4.0, -1.0, -2.0, 0.0, 1.0, 0.0, -1.0, 8.0]);
        let (packed, scales) = q.matmul_nbits();
        // Column 0 values -8, 4, -2, 2 → +8 → 0, 12, 6, 10 → bytes 0xC0, 0xA6.
        assert_eq!(packed, vec![0xC0, 0xA6, 0x89, 0x08]);
        assert_eq!(scales, vec![-0.5, -1.0]);
        // ONNX int4: -8 → 0x8, 1 → 0x1 (first in the low nibble).
        assert_eq!(q.onnx_int4()[0], 0x18);
    }

    #[test]
    fn int4_short_last_block_pads_with_zero() {
        // k = 3 in blocks of 2: blocks {0, 1} and {2}.
        let w = [2.0f32, 1.0, -4.0];
        let q = int4_blocks(&w, 3, 1, 2);
        // Block 0's extreme is 2 → scale -0.25; block 1's is -4 → scale 0.5.
        assert_eq!(q.scales, vec![-0.25, 0.5]);
        assert_eq!(q.values, vec![-8, -4, -8]);
        let (packed, scales) = q.matmul_nbits();
        assert_eq!(scales, vec![-0.25, 0.5]);
        // Block 0: -8+8 = 0, -4+8 = 4 → 0x40; block 1: 0 and the padding 8 → 0x80.
        assert_eq!(packed, vec![0x40, 0x80]);
        assert_eq!(q.dequantize(), vec![2.0, 1.0, -4.0]);
    }

    #[test]
    fn int4_rows_pack_as_the_transposed_weight_does() {
        // A [N = 3, K = 5] table in blocks of 4 (a short last block), and its transpose [K, N].
        let rows = [0.5f32, -1.0, 0.25, 2.0, -3.0, 1.5, 0.0, -0.75, 0.125, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let (n, k) = (3, 5);
        let transposed: Vec<f32> = (0..k * n).map(|i| rows[(i % n) * k + i / n]).collect();
        let (packed, scales) = int4_rows_matmul_nbits(&rows, n, k, 4);
        assert_eq!((packed, scales), int4_blocks(&transposed, k, n, 4).matmul_nbits());
        // Row 0, block 0: extreme 2 → scale -0.25; 0.5 → -2, -1 → 4, 0.25 → -1, 2 → -8; stored + 8.
        let (packed, scales) = int4_rows_matmul_nbits(&rows, n, k, 4);
        assert_eq!(scales[0], -0.25);
        assert_eq!(packed[0], (6u8) | (12 << 4));
        assert_eq!(packed[1], 7u8, "0.25 → -1 (7, low nibble) and 2 → -8 (0, high nibble)");
    }
}
