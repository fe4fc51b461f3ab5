//! The arithmetic, following PyTorch's CPU kernels where the last bits matter: LayerNorm's
//! row moments, ordered fused multiply-add matmuls, masks, softmax and every activation.

use super::*;

/// Row `r`'s slice `[H, past, D]` of a cache input `[batch, H, past, D]`.
pub(crate) fn row_cache<'c>(cache: &'c [f32], r: usize, c: &Gpt2Config, past: usize) -> &'c [f32] {
    let per_row = c.n_head * past * c.head_dim;
    &cache[r * per_row..(r + 1) * per_row]
}

/// `[S, E]` → `[H, S, D]`.
pub(crate) fn split_heads(x: ArrayView2<'_, f32>, c: &Gpt2Config) -> Array3<f32> {
    let d = c.head_dim;
    Array3::from_shape_fn((c.n_head, x.nrows(), d), |(h, i, j)| x[[i, h * d + j]])
}

/// Keys or values `[H, past + S, D]`: the row's cached `[H, past, D]` ones, then `new` `[S, E]` split into heads.
pub(crate) fn with_cache(past: Option<&[f32]>, new: ArrayView2<'_, f32>, c: &Gpt2Config) -> Array3<f32> {
    let (h, d) = (c.n_head, c.head_dim);
    let past = past.unwrap_or(&[]);
    let p = past.len() / (h * d).max(1);
    Array3::from_shape_fn((h, p + new.nrows(), d), |(head, t, j)| {
        if t < p { past[(head * p + t) * d + j] } else { new[[t - p, head * d + j]] }
    })
}

/// The additive self-attention mask transformers 4.57 builds for eager attention
/// (`create_causal_mask`): 0 where query `i` (at slot `past + i`) may see key `j` (causal and
/// `attention_mask[j] != 0`), the lowest f32 elsewhere. `[S, past + S]`.
pub(crate) fn self_attention_mask(mask: &[i64], seq: usize) -> Array2<f32> {
    let past = mask.len() - seq;
    Array2::from_shape_fn((seq, mask.len()), |(i, j)| if j <= past + i && mask[j] != 0 { 0.0 } else { f32::MIN })
}

/// The additive cross-attention mask, transformers' `invert_attention_mask`:
/// `(1 - encoder_attention_mask) · lowest f32`, the same for every query. `[S, encoder positions]`.
pub(crate) fn cross_attention_mask(mask: &[i64], seq: usize) -> Array2<f32> {
    Array2::from_shape_fn((seq, mask.len()), |(_, j)| (1.0 - mask[j] as f32) * f32::MIN)
}

/// Softmax over each row, evaluated in f64 and rounded once: PyTorch's vectorised `exp` cannot be
/// reproduced bit for bit, so this keeps the reference's own error out of the comparison.
pub(crate) fn softmax_rows(scores: &mut Array2<f32>) {
    for mut row in scores.rows_mut() {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m }) as f64;
        let exps: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        for (out, e) in row.iter_mut().zip(exps) {
            *out = (e / sum) as f32;
        }
    }
}

impl LayerNorm {
    pub(crate) fn load(w: &Weights, c: &Gpt2Config, stored_scope: &str) -> Result<LayerNorm, ReferenceError> {
        Ok(LayerNorm {
            gamma: vector(w, &format!("{stored_scope}.weight"), c.n_embd)?,
            beta: vector(w, &format!("{stored_scope}.bias"), c.n_embd)?,
            eps: c.layer_norm_epsilon,
        })
    }

    /// PyTorch's f32 CPU LayerNorm step for step: [`row_moments`], `rstd = 1 / √(var + eps)`, then
    /// `fma((x − mean)·rstd, γ, β)`.
    pub(crate) fn apply(&self, x: &Array2<f32>) -> Array2<f32> {
        let mut y = Array2::zeros(x.raw_dim());
        for (row, mut out) in x.rows().into_iter().zip(y.rows_mut()) {
            let values = row.to_vec();
            let (mean, var) = row_moments(&values);
            let rstd = 1.0 / (var + self.eps).sqrt();
            for (((o, &v), &g), &b) in out.iter_mut().zip(&values).zip(&self.gamma).zip(&self.beta) {
                *o = ((v + -mean) * rstd).mul_add(g, b);
            }
        }
        y
    }
}

/// Vector lanes and chunk length of PyTorch's `RowwiseMoments` (ATen/native/cpu/moments_utils.h)
/// in its AVX2 kernels, which computed the fixtures.
pub(crate) const MOMENT_LANES: usize = 8;
pub(crate) const MOMENT_CHUNK: usize = 16;

/// Per-lane Welford state: count, means and sums of squared deviations.
#[derive(Clone, Copy, Default)]
pub(crate) struct LaneMoments {
    pub(crate) count: usize,
    pub(crate) mean: [f32; MOMENT_LANES],
    pub(crate) m2: [f32; MOMENT_LANES],
}

impl LaneMoments {
    /// `AddMomentsVec`: merges `add` into `self`.
    pub(crate) fn merge(&mut self, add: &LaneMoments) {
        let n = self.count + add.count;
        let c = if n == 0 { 0.0 } else { add.count as f32 / n as f32 };
        let m0 = self.count as f32;
        for l in 0..MOMENT_LANES {
            let delta = add.mean[l] - self.mean[l];
            let m2 = self.m2[l] + add.m2[l];
            let c_delta = c * delta;
            self.mean[l] += c_delta;
            self.m2[l] = (delta * m0).mul_add(c_delta, m2);
        }
        self.count = n;
    }
}

/// Mean and biased variance of a row as PyTorch's f32 `RowwiseMoments` computes them: Welford over
/// 8-lane vectors in chunks of 16 vectors, chunks merged in a cascade, a scalar Welford over the
/// tail, then the lanes merged one by one (with the fused multiply-adds its compiler emits). Its
/// rounding, not an exact mean, is what transformers' outputs carry, and LayerNorm passes a shift of
/// the mean on to every feature, so matching it closely matters more than elsewhere.
pub(crate) fn row_moments(x: &[f32]) -> (f32, f32) {
    let vectors = x.len() / MOMENT_LANES;
    let chunks = vectors.div_ceil(MOMENT_CHUNK);
    // utils::CeilLog2.
    let depth = if chunks <= 2 { 1 } else { (usize::BITS - (chunks - 1).leading_zeros()) as usize };
    let mut stack = vec![LaneMoments::default(); depth];
    for chunk in 0..chunks {
        let count = MOMENT_CHUNK.min(vectors - chunk * MOMENT_CHUNK);
        let mut acc = LaneMoments { count, ..LaneMoments::default() };
        for j in 0..count {
            let weight = 1.0 / (j + 1) as f32;
            let start = (chunk * MOMENT_CHUNK + j) * MOMENT_LANES;
            for (l, &v) in x[start..start + MOMENT_LANES].iter().enumerate() {
                let delta = v - acc.mean[l];
                acc.mean[l] = weight.mul_add(delta, acc.mean[l]);
                acc.m2[l] = delta.mul_add(v - acc.mean[l], acc.m2[l]);
            }
        }
        stack[0].merge(&acc);
        let mut mask = chunk + 1;
        let mut level = 1;
        while level < depth && mask & 1 == 0 {
            let lower = std::mem::take(&mut stack[level - 1]);
            stack[level].merge(&lower);
            mask >>= 1;
            level += 1;
        }
    }
    for level in 1..depth {
        let upper = stack[level];
        stack[0].merge(&upper);
    }
    let (mut count, mut mean, mut m2) = (0usize, 0f32, 0f32);
    for &v in &x[vectors * MOMENT_LANES..] {
        let delta = v - mean;
        count += 1;
        mean += delta / count as f32;
        m2 = delta.mul_add(v - mean, m2);
    }
    for l in 0..MOMENT_LANES {
        let n = count + vectors;
        let c = if n == 0 { 0.0 } else { vectors as f32 / n as f32 };
        let delta = stack[0].mean[l] - mean;
        mean = c.mul_add(delta, mean);
        m2 += (delta * delta * c).mul_add(count as f32, stack[0].m2[l]);
        count = n;
    }
    (mean, m2 / x.len() as f32)
}

/// How a matmul adds up its products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sum {
    /// `acc + a·b`, rounded twice, k in order: PyTorch's own loop for small batched matmuls.
    Plain,
    /// `fma(a, b, acc)`, rounded once, k in order from 0: the BLAS kernels behind PyTorch's CPU
    /// `addmm` (bit-exact with them for small inner sizes).
    Fused,
}

impl Sum {
    pub(crate) fn step(self, acc: f32, a: f32, b: f32) -> f32 {
        match self {
            Sum::Plain => acc + a * b,
            // a·b is exact in f64, so this rounds like an f32 fma but for (rare) double-rounding ties,
            // and runs fast without the `fma` target feature.
            Sum::Fused => (f64::from(a) * f64::from(b) + f64::from(acc)) as f32,
        }
    }
}

/// The summation PyTorch's CPU `bmm` uses for one `[rows, inner] @ [inner, cols]` matrix: its plain
/// loop below 400 multiply-adds, BLAS above.
pub(crate) fn batched_matmul_sum(inner: usize, rows: usize, cols: usize) -> Sum {
    if inner * rows * cols < 400 { Sum::Plain } else { Sum::Fused }
}

/// `a @ b`, each element summed over k in order.
pub(crate) fn matmul(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>, sum: Sum) -> Array2<f32> {
    let mut out = Array2::zeros((a.nrows(), b.ncols()));
    for (a_row, mut out_row) in a.rows().into_iter().zip(out.rows_mut()) {
        for (&x, b_row) in a_row.iter().zip(b.rows()) {
            Zip::from(&mut out_row).and(&b_row).for_each(|o, &w| *o = sum.step(*o, x, w));
        }
    }
    out
}

/// `a @ btᵀ` for `bt` stored `[cols, inner]` (nn.Linear weights, keys, the tied `wte`), each element
/// summed over k in order.
pub(crate) fn matmul_transposed(a: ArrayView2<'_, f32>, bt: ArrayView2<'_, f32>, sum: Sum) -> Array2<f32> {
    let mut out = Array2::zeros((a.nrows(), bt.nrows()));
    for (a_row, mut out_row) in a.rows().into_iter().zip(out.rows_mut()) {
        for (o, b_row) in out_row.iter_mut().zip(bt.rows()) {
            *o = a_row.iter().zip(b_row).fold(0.0, |acc, (&x, &w)| sum.step(acc, x, w));
        }
    }
    out
}

impl Conv1D {
    /// `{stored_scope}.weight` `[n_in, n_out]` and `{stored_scope}.bias` `[n_out]`.
    pub(crate) fn load(w: &Weights, stored_scope: &str, n_in: usize, n_out: usize) -> Result<Conv1D, ReferenceError> {
        Ok(Conv1D {
            weight: matrix(w, &format!("{stored_scope}.weight"), n_in, n_out)?,
            bias: vector(w, &format!("{stored_scope}.bias"), n_out)?,
        })
    }

    pub(crate) fn apply(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        matmul(x, self.weight.view(), Sum::Fused) + &self.bias
    }
}

impl Linear {
    /// `{name}.weight` `[n_out, n_in]` and, with `bias`, `{name}.bias` `[n_out]` (head weights, stored
    /// without the `transformer.` prefix).
    pub(crate) fn load(
        w: &Weights,
        name: &str,
        bias: bool,
        n_in: usize,
        n_out: usize,
    ) -> Result<Linear, ReferenceError> {
        let weight = matrix(w, &format!("{name}.weight"), n_out, n_in)?;
        let bias = if bias { Some(vector(w, &format!("{name}.bias"), n_out)?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub(crate) fn apply(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        let y = matmul_transposed(x, self.weight.view(), Sum::Fused);
        match &self.bias {
            Some(b) => y + b,
            None => y,
        }
    }
}

impl Block {
    pub(crate) fn load(w: &Weights, c: &Gpt2Config, i: usize, cross: bool) -> Result<Block, ReferenceError> {
        let name = |n: &str| w.body_name(&format!("h.{i}.{n}"));
        let e = c.n_embd;
        let cross = if cross {
            Some(CrossAttention {
                ln: LayerNorm::load(w, c, &name("ln_cross_attn"))?,
                query: Conv1D::load(w, &name("crossattention.q_attn"), e, e)?,
                key_value: Conv1D::load(w, &name("crossattention.c_attn"), e, 2 * e)?,
                proj: Conv1D::load(w, &name("crossattention.c_proj"), e, e)?,
            })
        } else {
            None
        };
        Ok(Block {
            ln_1: LayerNorm::load(w, c, &name("ln_1"))?,
            attn_qkv: Conv1D::load(w, &name("attn.c_attn"), e, 3 * e)?,
            attn_proj: Conv1D::load(w, &name("attn.c_proj"), e, e)?,
            cross,
            ln_2: LayerNorm::load(w, c, &name("ln_2"))?,
            mlp_fc: Conv1D::load(w, &name("mlp.c_fc"), e, c.n_inner)?,
            mlp_proj: Conv1D::load(w, &name("mlp.c_proj"), c.n_inner, e)?,
        })
    }
}

impl LmHead {
    pub(crate) fn load(w: &Weights, c: &Gpt2Config) -> Result<LmHead, ReferenceError> {
        if c.tie_word_embeddings {
            Ok(LmHead::Tied)
        } else {
            Ok(LmHead::Untied(matrix(w, "lm_head.weight", c.vocab_size, c.n_embd)?))
        }
    }
}

impl Head {
    pub(crate) fn load(w: &Weights, c: &Gpt2Config, task: Task) -> Result<Head, ReferenceError> {
        let e = c.n_embd;
        Ok(match task {
            Task::TextGeneration | Task::TextGenerationWithPast => Head::LanguageModel(LmHead::load(w, c)?),
            Task::FeatureExtraction | Task::FeatureExtractionWithPast => Head::Hidden,
            Task::TextClassification => Head::SequenceClassification(Linear::load(w, "score", false, e, c.num_labels)?),
            Task::TokenClassification => {
                Head::TokenClassification(Linear::load(w, "classifier", true, e, c.num_labels)?)
            }
            Task::QuestionAnswering => Head::QuestionAnswering(Linear::load(w, "qa_outputs", true, e, 2)?),
            Task::MultipleChoice => {
                Head::MultipleChoice { lm: LmHead::load(w, c)?, summary: SequenceSummary::load(w, c)? }
            }
        })
    }
}

impl SequenceSummary {
    /// GPT2DoubleHeadsModel sets `num_labels = 1` before building its head, whatever config.json
    /// says, so a projection to labels has one output.
    pub(crate) fn load(w: &Weights, c: &Gpt2Config) -> Result<SequenceSummary, ReferenceError> {
        let s = &c.summary;
        let kind = s.kind().map_err(ReferenceError::Config)?;
        let activation = s.activation().map_err(ReferenceError::Config)?;
        let proj = if s.use_proj {
            let classes = if s.proj_to_labels { 1 } else { c.n_embd };
            Some(Linear::load(w, "multiple_choice_head.summary", true, c.n_embd, classes)?)
        } else {
            None
        };
        Ok(SequenceSummary { kind, proj, activation })
    }

    /// `mc_logits` (dims and values): as in transformers, `first`, `last` and `mean` act on axis 1 of
    /// the `[batch, choices, sequence, n_embd]` hidden state (the choices), `cls_index` picks each
    /// choice's `mc_token_ids` position; then the projection, the activation, and `squeeze(-1)`.
    pub(crate) fn apply(
        &self,
        b: &Batch<'_>,
        rows: &[RowOutput],
        e: usize,
    ) -> Result<(Vec<usize>, Vec<f32>), ReferenceError> {
        let (batch, choices, seq) = (b.batch, b.choices, b.seq);
        let (dims, pooled) = match self.kind {
            SummaryType::ClsIndex => {
                let mc = b.mc_token_ids.unwrap_or(&[]);
                let mut index = Vec::with_capacity(mc.len());
                for (i, &t) in mc.iter().enumerate() {
                    let t = usize::try_from(t).ok().filter(|&t| t < seq).ok_or_else(|| {
                        value_error(
                            "mc_token_ids",
                            format!("index {t} at flat index {i} is outside 0..{seq} (sequence_length)"),
                        )
                    })?;
                    index.push(t);
                }
                let pooled = Array2::from_shape_fn((batch * choices, e), |(r, j)| rows[r].hidden[[index[r], j]]);
                (vec![batch, choices], pooled)
            }
            SummaryType::First | SummaryType::Last | SummaryType::Mean => {
                if choices == 0 {
                    return Err(value_error("input_ids", "the multiple-choice summary needs at least one choice"));
                }
                let pooled = Array2::from_shape_fn((batch * seq, e), |(r, j)| {
                    let (entry, pos) = (r / seq.max(1), r % seq.max(1));
                    let at = |choice: usize| rows[entry * choices + choice].hidden[[pos, j]];
                    match self.kind {
                        SummaryType::First => at(0),
                        SummaryType::Last => at(choices - 1),
                        _ => ((0..choices).map(|ch| f64::from(at(ch))).sum::<f64>() / choices as f64) as f32,
                    }
                });
                (vec![batch, seq], pooled)
            }
        };
        let mut out = match &self.proj {
            Some(p) => p.apply(pooled.view()),
            None => pooled,
        };
        if let Some(act) = self.activation {
            out.mapv_inplace(|v| activate(act, v));
        }
        let classes = out.ncols();
        let dims = if classes == 1 { dims } else { [dims, vec![classes]].concat() };
        Ok((dims, out.into_iter().collect()))
    }
}

/// A weight by its stored name, checked against `shape`, as f32 values.
pub(crate) fn values(w: &Weights, stored: &str, shape: &[usize]) -> Result<Vec<f32>, ReferenceError> {
    w.get(stored, shape)?.to_f32_vec().ok_or_else(|| ReferenceError::Weight {
        name: stored.into(),
        message: "cannot be read as floating point".into(),
    })
}

pub(crate) fn matrix(w: &Weights, stored: &str, rows: usize, cols: usize) -> Result<Array2<f32>, ReferenceError> {
    Array2::from_shape_vec((rows, cols), values(w, stored, &[rows, cols])?)
        .map_err(|e| ReferenceError::Weight { name: stored.into(), message: e.to_string() })
}

pub(crate) fn vector(w: &Weights, stored: &str, len: usize) -> Result<Array1<f32>, ReferenceError> {
    Ok(Array1::from_vec(values(w, stored, &[len])?))
}

/// `ACT2FN[name](x)` for every activation a GPT-2 config can name, in f64 rounded once.
pub(crate) fn activate(act: Activation, x: f32) -> f32 {
    let v = f64::from(x);
    let sigmoid = |t: f64| 1.0 / (1.0 + (-t).exp());
    let y = match act {
        Activation::GeluTanh => {
            0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        }
        Activation::Gelu => gelu_erf(v),
        Activation::GeluFast => 0.5 * v * (1.0 + (v * 0.7978845608 * (1.0 + 0.044715 * v * v)).tanh()),
        Activation::Gelu10 => gelu_erf(v).clamp(-10.0, 10.0),
        Activation::QuickGelu => v * sigmoid(1.702 * v),
        // Written so NaN passes through, as in PyTorch.
        Activation::Relu => {
            if v < 0.0 {
                0.0
            } else {
                v
            }
        }
        Activation::Relu2 => {
            let r = if v < 0.0 { 0.0 } else { v };
            r * r
        }
        Activation::Relu6 => v.clamp(0.0, 6.0),
        Activation::Silu => v * sigmoid(v),
        Activation::Tanh => v.tanh(),
        Activation::Sigmoid => sigmoid(v),
        Activation::LeakyRelu => {
            if v < 0.0 {
                v * 0.01
            } else {
                v
            }
        }
        // PyTorch's mish kernel: x·tanh(log1p(exp(x))), no softplus threshold.
        Activation::Mish => v * v.exp().ln_1p().tanh(),
        Activation::Linear => v,
    };
    y as f32
}

/// `0.5·x·(1 + erf(x/√2))`.
pub(crate) fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

/// The error function (stable Rust has none): `2/√π · e^(−x²) · Σ 2ⁿ x^(2n+1) / (2n+1)!!`, a series of
/// positive terms (no cancellation, relative error near 1e-15); beyond |x| = 6, erf is ±1 to
/// within 2e-17.
pub(crate) fn erf(x: f64) -> f64 {
    let a = x.abs();
    if a.is_nan() {
        return x;
    }
    if a >= 6.0 {
        return 1.0f64.copysign(x);
    }
    let a2 = a * a;
    let (mut term, mut sum, mut n) = (a, a, 0.0f64);
    while term > sum * 1e-17 {
        n += 1.0;
        term *= 2.0 * a2 / (2.0 * n + 1.0);
        sum += term;
    }
    (std::f64::consts::FRAC_2_SQRT_PI * (-a2).exp() * sum).copysign(x)
}
