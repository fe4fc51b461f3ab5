//! The model: its weights as f32 arrays, one block after another, and the forward that runs
//! each sequence through them.

use super::*;

/// GPT-2 of one task with every weight it needs as f32, ready to run.
pub struct ReferenceModel {
    pub(crate) config: Gpt2Config,
    pub(crate) task: Task,
    /// `wte.weight` `[vocab_size, n_embd]` (also the tied LM head).
    pub(crate) wte: Array2<f32>,
    /// `wpe.weight` `[n_positions, n_embd]`.
    pub(crate) wpe: Array2<f32>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) ln_f: LayerNorm,
    pub(crate) head: Head,
}

/// `nn.LayerNorm` over the last axis.
pub(crate) struct LayerNorm {
    pub(crate) gamma: Array1<f32>,
    pub(crate) beta: Array1<f32>,
    pub(crate) eps: f32,
}

/// transformers' `Conv1D`: `x @ weight + bias` with `weight` stored `[in, out]`.
pub(crate) struct Conv1D {
    pub(crate) weight: Array2<f32>,
    pub(crate) bias: Array1<f32>,
}

/// `nn.Linear`: `x @ weightᵀ (+ bias)` with `weight` stored `[out, in]`.
pub(crate) struct Linear {
    pub(crate) weight: Array2<f32>,
    pub(crate) bias: Option<Array1<f32>>,
}

/// One `GPT2Block`.
pub(crate) struct Block {
    pub(crate) ln_1: LayerNorm,
    /// `attn.c_attn`: query, key and value side by side, `[n_embd, 3·n_embd]`.
    pub(crate) attn_qkv: Conv1D,
    pub(crate) attn_proj: Conv1D,
    /// With `add_cross_attention`, for the tasks that take encoder states.
    pub(crate) cross: Option<CrossAttention>,
    pub(crate) ln_2: LayerNorm,
    pub(crate) mlp_fc: Conv1D,
    pub(crate) mlp_proj: Conv1D,
}

/// A block's `ln_cross_attn` and `crossattention`.
pub(crate) struct CrossAttention {
    pub(crate) ln: LayerNorm,
    /// `q_attn` `[n_embd, n_embd]`.
    pub(crate) query: Conv1D,
    /// `c_attn`: key and value of the encoder states, `[n_embd, 2·n_embd]`.
    pub(crate) key_value: Conv1D,
    pub(crate) proj: Conv1D,
}

/// The language-model head: `wte` (tied) or its own `lm_head.weight` `[vocab_size, n_embd]`.
pub(crate) enum LmHead {
    Tied,
    Untied(Array2<f32>),
}

/// What the task computes from the final hidden state.
pub(crate) enum Head {
    LanguageModel(LmHead),
    Hidden,
    /// `score` (no bias) at each row's last non-pad token.
    SequenceClassification(Linear),
    TokenClassification(Linear),
    /// `qa_outputs`: start and end logits.
    QuestionAnswering(Linear),
    MultipleChoice {
        lm: LmHead,
        summary: SequenceSummary,
    },
}

/// `GPT2SequenceSummary`, the multiple-choice head.
pub(crate) struct SequenceSummary {
    pub(crate) kind: SummaryType,
    pub(crate) proj: Option<Linear>,
    pub(crate) activation: Option<Activation>,
}

impl ReferenceModel {
    /// Loads every weight the task needs as f32.
    pub fn load(ckpt: &Checkpoint, task: Task) -> Result<ReferenceModel, ReferenceError> {
        let c = &ckpt.config;
        let w = &ckpt.weights;
        let wte = matrix(w, &w.body_name("wte.weight"), c.vocab_size, c.n_embd)?;
        let wpe = matrix(w, &w.body_name("wpe.weight"), c.n_positions, c.n_embd)?;
        let cross = task.cross_attends(c);
        let blocks = (0..c.n_layer).map(|i| Block::load(w, c, i, cross)).collect::<Result<_, _>>()?;
        let ln_f = LayerNorm::load(w, c, &w.body_name("ln_f"))?;
        let head = Head::load(w, c, task)?;
        Ok(ReferenceModel { config: c.clone(), task, wte, wpe, blocks, ln_f, head })
    }

    /// Runs the model on inputs named as the export contract names them, returning the outputs
    /// the export of the task returns, named as the export names them, in the export's output order.
    pub fn run(&self, inputs: &[(&str, &HostTensor)]) -> Result<Vec<(String, HostTensor)>, ReferenceError> {
        let batch = Batch::read(self, inputs)?;
        let rows: Vec<RowOutput> = (0..batch.rows()).map(|r| self.forward_row(&batch, r)).collect();
        self.outputs(&batch, &rows)
    }

    /// The input names of the task's export, in the contract's order.
    pub(crate) fn input_names(&self) -> Vec<String> {
        let (c, task) = (&self.config, self.task);
        let mut names = vec!["input_ids".to_string(), "attention_mask".to_string()];
        if task.takes_position_ids() {
            names.push("position_ids".into());
        }
        if task.with_past() {
            for i in 0..c.n_layer {
                names.extend([contract::past_key(i), contract::past_value(i)]);
            }
        }
        if task == Task::MultipleChoice {
            names.push("mc_token_ids".into());
        }
        if task.cross_attends(c) {
            names.extend(["encoder_hidden_states".to_string(), "encoder_attention_mask".to_string()]);
            if task.with_past() {
                for i in 0..c.n_layer {
                    names.extend([contract::past_cross_key(i), contract::past_cross_value(i)]);
                }
            }
        }
        names
    }

    /// The blocks and final LayerNorm over one sequence row.
    pub(crate) fn forward_row(&self, b: &Batch<'_>, r: usize) -> RowOutput {
        let c = &self.config;
        let (seq, e, total) = (b.seq, c.n_embd, b.past + b.seq);
        let ids = &b.ids[r * seq..(r + 1) * seq];
        let positions = &b.positions[r * seq..(r + 1) * seq];
        let mut h = Array2::from_shape_fn((seq, e), |(i, j)| self.wte[[ids[i], j]] + self.wpe[[positions[i], j]]);
        let self_mask = self_attention_mask(&b.mask[r * total..(r + 1) * total], seq);
        let encoder = b.encoder.as_ref().map(|enc| {
            let enc_total = enc.past + enc.len;
            let states = Array2::from_shape_fn((enc.len, e), |(i, j)| enc.states[(r * enc.len + i) * e + j]);
            (enc, states, cross_attention_mask(&enc.mask[r * enc_total..(r + 1) * enc_total], seq))
        });
        let mut presents = Vec::with_capacity(self.blocks.len());
        let mut cross_presents = Vec::new();
        for (layer, block) in self.blocks.iter().enumerate() {
            let x = block.ln_1.apply(&h);
            let qkv = block.attn_qkv.apply(x.view());
            let past = b.past_kv.get(layer).map(|(k, v)| (row_cache(k, r, c, b.past), row_cache(v, r, c, b.past)));
            let q = split_heads(qkv.slice(s![.., ..e]), c);
            let k = with_cache(past.map(|p| p.0), qkv.slice(s![.., e..2 * e]), c);
            let v = with_cache(past.map(|p| p.1), qkv.slice(s![.., 2 * e..]), c);
            let context = self.attend(layer, &q, &k, &v, Some(b.past), &self_mask);
            h = h + block.attn_proj.apply(context.view());
            presents.push((k, v));
            if let (Some(cross), Some((enc, states, mask))) = (&block.cross, &encoder) {
                let x = cross.ln.apply(&h);
                let q = split_heads(cross.query.apply(x.view()).view(), c);
                let kv = cross.key_value.apply(states.view());
                let past =
                    enc.past_kv.get(layer).map(|(k, v)| (row_cache(k, r, c, enc.past), row_cache(v, r, c, enc.past)));
                let k = with_cache(past.map(|p| p.0), kv.slice(s![.., ..e]), c);
                let v = with_cache(past.map(|p| p.1), kv.slice(s![.., e..]), c);
                let context = self.attend(layer, &q, &k, &v, None, mask);
                h = h + cross.proj.apply(context.view());
                cross_presents.push((k, v));
            }
            let x = block.ln_2.apply(&h);
            let mut hidden = block.mlp_fc.apply(x.view());
            hidden.mapv_inplace(|v| activate(c.activation, v));
            h = h + block.mlp_proj.apply(hidden.view());
        }
        RowOutput { hidden: self.ln_f.apply(&h), presents, cross_presents }
    }

    /// `eager_attention_forward` (or `_upcast_and_reordered_attn`) of layer `layer` for every head:
    /// `q` `[H, S, D]`, `k`, `v` `[H, T, D]`; `causal_past` is the past length of self-attention
    /// (`None` for cross-attention, which has no causal mask); `additive` `[S, T]` is the mask
    /// transformers adds. Returns the merged heads `[S, E]`.
    pub(crate) fn attend(
        &self,
        layer: usize,
        q: &Array3<f32>,
        k: &Array3<f32>,
        v: &Array3<f32>,
        causal_past: Option<usize>,
        additive: &Array2<f32>,
    ) -> Array2<f32> {
        let c = &self.config;
        let (seq, d) = (q.shape()[1], c.head_dim);
        let mut context = Array2::zeros((seq, c.n_embd));
        for head in 0..c.n_head {
            let (q_h, k_h, v_h) =
                (q.index_axis(Axis(0), head), k.index_axis(Axis(0), head), v.index_axis(Axis(0), head));
            let mut scores = matmul_transposed(q_h, k_h, batched_matmul_sum(d, seq, k_h.nrows()));
            self.scale_scores(layer, &mut scores);
            for ((i, j), s) in scores.indexed_iter_mut() {
                // transformers first replaces causally hidden scores by the lowest f32 (GPT2Attention's
                // `bias` buffer), then adds the combined causal and padding mask: hidden keys end at
                // -inf, padding keys at the lowest f32, so a row of padding keys softmaxes uniformly.
                if causal_past.is_some_and(|past| j > past + i) {
                    *s = f32::MIN;
                }
                *s += additive[[i, j]];
            }
            softmax_rows(&mut scores);
            let out = matmul(scores.view(), v_h, batched_matmul_sum(v_h.nrows(), seq, d));
            context.slice_mut(s![.., head * d..(head + 1) * d]).assign(&out);
        }
        context
    }

    /// `q·kᵀ` scaling: divisions by `√head_dim` and `layer + 1` as the eager path does them, or one
    /// factor (baddbmm's `alpha`) with `reorder_and_upcast_attn`.
    pub(crate) fn scale_scores(&self, layer: usize, scores: &mut Array2<f32>) {
        let c = &self.config;
        if c.reorder_and_upcast_attn {
            let mut alpha = 1.0f64;
            if c.scale_attn_weights {
                alpha /= (c.head_dim as f64).sqrt();
            }
            if c.scale_attn_by_inverse_layer_idx {
                alpha /= (layer + 1) as f64;
            }
            let alpha = alpha as f32;
            scores.mapv_inplace(|s| s * alpha);
            return;
        }
        if c.scale_attn_weights {
            let root = (c.head_dim as f64).sqrt() as f32;
            scores.mapv_inplace(|s| s / root);
        }
        if c.scale_attn_by_inverse_layer_idx {
            let depth = (layer + 1) as f32;
            scores.mapv_inplace(|s| s / depth);
        }
    }

    /// The task's outputs from every row's final hidden state, in the export's order.
    pub(crate) fn outputs(
        &self,
        b: &Batch<'_>,
        rows: &[RowOutput],
    ) -> Result<Vec<(String, HostTensor)>, ReferenceError> {
        let c = &self.config;
        let (batch, seq) = (b.batch, b.seq);
        let mut out = Vec::new();
        match &self.head {
            Head::LanguageModel(lm) => {
                let data = rows.iter().flat_map(|row| self.lm_logits(lm, &row.hidden)).collect();
                out.push(("logits".to_string(), f32_tensor(vec![batch, seq, c.vocab_size], data)));
            }
            Head::Hidden => {
                let data = rows.iter().flat_map(|row| row.hidden.iter().copied()).collect();
                out.push(("last_hidden_state".to_string(), f32_tensor(vec![batch, seq, c.n_embd], data)));
            }
            Head::SequenceClassification(score) => {
                let pooled = Array2::from_shape_fn((batch, c.n_embd), |(r, j)| {
                    rows[r].hidden[[self.last_token(&b.ids[r * seq..(r + 1) * seq]), j]]
                });
                let logits = score.apply(pooled.view());
                out.push(("logits".to_string(), f32_tensor(vec![batch, c.num_labels], logits.into_iter().collect())));
            }
            Head::TokenClassification(classifier) => {
                let data = rows.iter().flat_map(|row| classifier.apply(row.hidden.view())).collect();
                out.push(("logits".to_string(), f32_tensor(vec![batch, seq, c.num_labels], data)));
            }
            Head::QuestionAnswering(qa) => {
                let both: Vec<Array2<f32>> = rows.iter().map(|row| qa.apply(row.hidden.view())).collect();
                for (name, col) in [("start_logits", 0), ("end_logits", 1)] {
                    let data = both.iter().flat_map(|l| l.column(col).to_vec()).collect();
                    out.push((name.to_string(), f32_tensor(vec![batch, seq], data)));
                }
            }
            Head::MultipleChoice { lm, summary } => {
                let data = rows.iter().flat_map(|row| self.lm_logits(lm, &row.hidden)).collect();
                out.push(("logits".to_string(), f32_tensor(vec![batch, b.choices, seq, c.vocab_size], data)));
                let (dims, values) = summary.apply(b, rows, c.n_embd)?;
                out.push(("mc_logits".to_string(), f32_tensor(dims, values)));
            }
        }
        if self.task.with_past() {
            let total = b.past + seq;
            for layer in 0..c.n_layer {
                let shape = vec![batch, c.n_head, total, c.head_dim];
                let keys = rows.iter().flat_map(|row| row.presents[layer].0.iter().copied()).collect();
                let values = rows.iter().flat_map(|row| row.presents[layer].1.iter().copied()).collect();
                out.push((contract::present_key(layer), f32_tensor(shape.clone(), keys)));
                out.push((contract::present_value(layer), f32_tensor(shape, values)));
            }
            if let Some(enc) = &b.encoder {
                for layer in 0..c.n_layer {
                    let shape = vec![batch, c.n_head, enc.past + enc.len, c.head_dim];
                    let keys = rows.iter().flat_map(|row| row.cross_presents[layer].0.iter().copied()).collect();
                    let values = rows.iter().flat_map(|row| row.cross_presents[layer].1.iter().copied()).collect();
                    out.push((contract::present_cross_key(layer), f32_tensor(shape.clone(), keys)));
                    out.push((contract::present_cross_value(layer), f32_tensor(shape, values)));
                }
            }
        }
        Ok(out)
    }

    /// `lm_head(hidden)` `[S, vocab_size]`, flattened.
    pub(crate) fn lm_logits(&self, lm: &LmHead, hidden: &Array2<f32>) -> Vec<f32> {
        let weight = match lm {
            LmHead::Tied => &self.wte,
            LmHead::Untied(w) => w,
        };
        matmul_transposed(hidden.view(), weight.view(), Sum::Fused).into_iter().collect()
    }

    /// GPT2ForSequenceClassification's pooled position: the rightmost token that is not
    /// `pad_token_id` (`argmax(arange · (ids != pad))`, so 0 when every token is a pad), or the last
    /// position without `pad_token_id`.
    pub(crate) fn last_token(&self, ids: &[usize]) -> usize {
        match self.config.pad_token_id {
            Some(pad) => {
                ids.iter().enumerate().filter(|&(_, &id)| id != pad as usize).map(|(j, _)| j).max().unwrap_or(0)
            }
            None => ids.len().saturating_sub(1),
        }
    }
}
