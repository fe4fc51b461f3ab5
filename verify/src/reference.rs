//! An eager GPT-2 forward computed straight from a checkpoint's weights: the oracle `gpt2c verify`
//! compares exported graphs against.
//!
//! It shares no arithmetic with the graph builder (`crate::gpt2`), so a mistake there cannot hide
//! in both: the weights are read once into f32 `ndarray` arrays and the forward follows
//! transformers 4.57 `modeling_gpt2.py` with eager attention step by step, down to its masking
//! constants (a query row whose keys are all padding softmaxes uniformly over its causal keys, as
//! there). Only the export contract's input and output names are shared.
//!
//! Everything is f32 as in transformers' fp32 runs, and where the last bits get amplified (on the
//! fixtures, transformers' own output is up to 1.2e-5 away from exact arithmetic) the arithmetic
//! follows PyTorch's CPU kernels: LayerNorm's mean and variance as its `RowwiseMoments` computes
//! them, the small attention matmuls as its plain loop, linear layers as ordered fused
//! multiply-adds (what its BLAS does for small inner sizes). Softmax and the activations are
//! evaluated in f64 and rounded once. On the committed fixtures the result stays within 6e-6 of
//! transformers' outputs. Each sequence (a `(batch, choice)` pair for multiple choice) runs on its
//! own: GPT-2 never mixes rows, so this is the batched computation element for element.

use std::borrow::Cow;
use std::collections::BTreeMap;

use gpt2c_runtime::{HostData, HostTensor};
use ndarray::{Array1, Array2, Array3, ArrayView2, Axis, Zip, s};

use gpt2c_compiler::checkpoint::{Activation, Checkpoint, Gpt2Config, SummaryType, WeightError, Weights};
use gpt2c_compiler::gpt2::Task;

use crate::contract;

/// Errors loading the reference model or running it.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("tensor `{name}`: {message}")]
    Weight { name: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("input `{name}` is missing: the {task} export takes {expected}")]
    MissingInput { name: String, task: &'static str, expected: String },
    #[error("input `{name}` is not an input of the {task} export, which takes {expected}")]
    UnknownInput { name: String, task: &'static str, expected: String },
    #[error("input `{name}` is given more than once")]
    DuplicateInput { name: String },
    #[error("input `{name}` holds {found}, expected {expected}")]
    InputType { name: String, expected: &'static str, found: &'static str },
    #[error("input `{name}` has shape {found:?}, expected {expected}")]
    InputShape { name: String, expected: String, found: Vec<usize> },
    #[error("input `{name}`: {message}")]
    InputValue { name: String, message: String },
}

/// GPT-2 of one task with every weight it needs as f32, ready to run.
pub struct ReferenceModel {
    config: Gpt2Config,
    task: Task,
    /// `wte.weight` `[vocab_size, n_embd]` (also the tied LM head).
    wte: Array2<f32>,
    /// `wpe.weight` `[n_positions, n_embd]`.
    wpe: Array2<f32>,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Head,
}

/// `nn.LayerNorm` over the last axis.
struct LayerNorm {
    gamma: Array1<f32>,
    beta: Array1<f32>,
    eps: f32,
}

/// transformers' `Conv1D`: `x @ weight + bias` with `weight` stored `[in, out]`.
struct Conv1D {
    weight: Array2<f32>,
    bias: Array1<f32>,
}

/// `nn.Linear`: `x @ weightᵀ (+ bias)` with `weight` stored `[out, in]`.
struct Linear {
    weight: Array2<f32>,
    bias: Option<Array1<f32>>,
}

/// One `GPT2Block`.
struct Block {
    ln_1: LayerNorm,
    /// `attn.c_attn`: query, key and value side by side, `[n_embd, 3·n_embd]`.
    attn_qkv: Conv1D,
    attn_proj: Conv1D,
    /// With `add_cross_attention`, for the tasks that take encoder states.
    cross: Option<CrossAttention>,
    ln_2: LayerNorm,
    mlp_fc: Conv1D,
    mlp_proj: Conv1D,
}

/// A block's `ln_cross_attn` and `crossattention`.
struct CrossAttention {
    ln: LayerNorm,
    /// `q_attn` `[n_embd, n_embd]`.
    query: Conv1D,
    /// `c_attn`: key and value of the encoder states, `[n_embd, 2·n_embd]`.
    key_value: Conv1D,
    proj: Conv1D,
}

/// The language-model head: `wte` (tied) or its own `lm_head.weight` `[vocab_size, n_embd]`.
enum LmHead {
    Tied,
    Untied(Array2<f32>),
}

/// What the task computes from the final hidden state.
enum Head {
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
struct SequenceSummary {
    kind: SummaryType,
    proj: Option<Linear>,
    activation: Option<Activation>,
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
    fn input_names(&self) -> Vec<String> {
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
    fn forward_row(&self, b: &Batch<'_>, r: usize) -> RowOutput {
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
    fn attend(
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
    fn scale_scores(&self, layer: usize, scores: &mut Array2<f32>) {
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
    fn outputs(&self, b: &Batch<'_>, rows: &[RowOutput]) -> Result<Vec<(String, HostTensor)>, ReferenceError> {
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
    fn lm_logits(&self, lm: &LmHead, hidden: &Array2<f32>) -> Vec<f32> {
        let weight = match lm {
            LmHead::Tied => &self.wte,
            LmHead::Untied(w) => w,
        };
        matmul_transposed(hidden.view(), weight.view(), Sum::Fused).into_iter().collect()
    }

    /// GPT2ForSequenceClassification's pooled position: the rightmost token that is not
    /// `pad_token_id` (`argmax(arange · (ids != pad))`, so 0 when every token is a pad), or the last
    /// position without `pad_token_id`.
    fn last_token(&self, ids: &[usize]) -> usize {
        match self.config.pad_token_id {
            Some(pad) => {
                ids.iter().enumerate().filter(|&(_, &id)| id != pad as usize).map(|(j, _)| j).max().unwrap_or(0)
            }
            None => ids.len().saturating_sub(1),
        }
    }
}

/// One sequence's final hidden state and caches.
struct RowOutput {
    /// After `ln_f`, `[S, n_embd]`.
    hidden: Array2<f32>,
    /// Per layer: key and value `[H, past + S, D]`.
    presents: Vec<(Array3<f32>, Array3<f32>)>,
    /// Per layer with cross-attention: key and value `[H, past_enc + enc, D]`.
    cross_presents: Vec<(Array3<f32>, Array3<f32>)>,
}

/// One run's inputs, checked against the export contract and the config.
struct Batch<'a> {
    batch: usize,
    /// Choices per batch entry (multiple choice; 1 otherwise).
    choices: usize,
    seq: usize,
    past: usize,
    /// `[rows, seq]`, each inside the vocabulary.
    ids: Vec<usize>,
    /// `[rows, past + seq]`.
    mask: &'a [i64],
    /// `[rows, seq]`, each inside `wpe`.
    positions: Vec<usize>,
    past_kv: Vec<LayerCache<'a>>,
    mc_token_ids: Option<&'a [i64]>,
    encoder: Option<EncoderBatch<'a>>,
}

/// The cross-attention inputs of one run.
struct EncoderBatch<'a> {
    /// Encoder positions given this run.
    len: usize,
    /// Cached encoder positions.
    past: usize,
    /// `[batch, len, n_embd]`.
    states: Cow<'a, [f32]>,
    /// `[batch, past + len]`.
    mask: &'a [i64],
    past_kv: Vec<LayerCache<'a>>,
}

/// One layer's past key and value inputs, `[batch, H, past, D]` each.
type LayerCache<'a> = (Cow<'a, [f32]>, Cow<'a, [f32]>);

impl<'a> Batch<'a> {
    fn rows(&self) -> usize {
        self.batch * self.choices
    }

    /// Checks names, element types, shapes and values of `inputs` for `model`'s task.
    fn read(model: &ReferenceModel, inputs: &[(&'a str, &'a HostTensor)]) -> Result<Batch<'a>, ReferenceError> {
        let (c, task) = (&model.config, model.task);
        let named = NamedInputs::new(model, inputs)?;
        let ids_t = named.take("input_ids")?;
        let ids = int_data("input_ids", ids_t)?;
        let lead_rank = if task == Task::MultipleChoice { 2 } else { 1 };
        let tokens_dims =
            if lead_rank == 2 { "[batch_size, num_choices, sequence_length]" } else { "[batch_size, sequence_length]" };
        if ids_t.shape.len() != lead_rank + 1 {
            return Err(shape_error("input_ids", ids_t, tokens_dims.to_string()));
        }
        let (batch, choices, seq) = match ids_t.shape[..] {
            [batch, seq] => (batch, 1, seq),
            [batch, choices, seq] => (batch, choices, seq),
            _ => return Err(shape_error("input_ids", ids_t, tokens_dims.to_string())),
        };
        if task == Task::TextClassification {
            if c.pad_token_id.is_none() && batch != 1 {
                return Err(shape_error(
                    "input_ids",
                    ids_t,
                    "[1, sequence_length]: config.json sets no pad_token_id, so (as in transformers) the last \
                     token of each row cannot be found in a batch larger than 1"
                        .to_string(),
                ));
            }
            if seq == 0 {
                return Err(value_error("input_ids", "text classification needs at least one token per row"));
            }
        }
        let ids = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                usize::try_from(id).ok().filter(|&t| t < c.vocab_size).ok_or_else(|| {
                    value_error(
                        "input_ids",
                        format!(
                            "token id {id} at flat index {i} is outside the vocabulary (vocab_size {})",
                            c.vocab_size
                        ),
                    )
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;

        let (past, past_kv) = if task.with_past() {
            read_caches(&named, c, batch, contract::past_key, contract::past_value)?
        } else {
            (0, Vec::new())
        };
        let total = past + seq;
        if total > c.n_positions {
            return Err(value_error(
                "attention_mask",
                format!(
                    "past and current positions total {total}, more than n_positions ({}): transformers' causal mask \
                     covers only n_positions keys",
                    c.n_positions
                ),
            ));
        }

        let mask_t = named.take("attention_mask")?;
        let mask = int_data("attention_mask", mask_t)?;
        let lead: Vec<usize> = ids_t.shape[..lead_rank].to_vec();
        let mask_shape = [lead.clone(), vec![total]].concat();
        if mask_t.shape != mask_shape {
            let dims = if task.with_past() {
                format!("{mask_shape:?} (past_sequence_length {past} from the past key/values + sequence_length {seq})")
            } else {
                format!("{mask_shape:?} (the shape of input_ids)")
            };
            return Err(shape_error("attention_mask", mask_t, dims));
        }

        let positions = if task.takes_position_ids() {
            let t = named.take("position_ids")?;
            let values = int_data("position_ids", t)?;
            if t.shape != ids_t.shape {
                return Err(shape_error("position_ids", t, format!("{:?} (the shape of input_ids)", ids_t.shape)));
            }
            values
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    usize::try_from(p).ok().filter(|&p| p < c.n_positions).ok_or_else(|| {
                        value_error(
                            "position_ids",
                            format!("position {p} at flat index {i} is outside 0..{} (n_positions)", c.n_positions),
                        )
                    })
                })
                .collect::<Result<Vec<usize>, _>>()?
        } else {
            (0..batch * choices).flat_map(|_| 0..seq).collect()
        };

        let mc_token_ids = if task == Task::MultipleChoice {
            let t = named.take("mc_token_ids")?;
            let values = int_data("mc_token_ids", t)?;
            if t.shape[..] != lead[..] {
                return Err(shape_error("mc_token_ids", t, format!("{lead:?} ([batch_size, num_choices])")));
            }
            Some(values)
        } else {
            None
        };

        let encoder =
            if task.cross_attends(c) { Some(EncoderBatch::read(&named, c, batch, task.with_past())?) } else { None };
        Ok(Batch { batch, choices, seq, past, ids, mask, positions, past_kv, mc_token_ids, encoder })
    }
}

impl<'a> EncoderBatch<'a> {
    /// Checks the cross-attention inputs: encoder states, their mask and (with a cache) each layer's
    /// cached keys and values.
    fn read(
        named: &NamedInputs<'a>,
        c: &Gpt2Config,
        batch: usize,
        with_past: bool,
    ) -> Result<EncoderBatch<'a>, ReferenceError> {
        let states_t = named.take("encoder_hidden_states")?;
        let states = float_data("encoder_hidden_states", states_t)?;
        let len = match states_t.shape[..] {
            [b, len, e] if b == batch && e == c.n_embd => len,
            _ => {
                return Err(shape_error(
                    "encoder_hidden_states",
                    states_t,
                    format!("[{batch}, encoder_sequence_length, {}]", c.n_embd),
                ));
            }
        };
        let (enc_past, enc_past_kv) = if with_past {
            read_caches(named, c, batch, contract::past_cross_key, contract::past_cross_value)?
        } else {
            (0, Vec::new())
        };
        let mask_t = named.take("encoder_attention_mask")?;
        let mask = int_data("encoder_attention_mask", mask_t)?;
        if mask_t.shape[..] != [batch, enc_past + len] {
            return Err(shape_error(
                "encoder_attention_mask",
                mask_t,
                format!(
                    "[{batch}, {}] (cached encoder positions {enc_past} + encoder_sequence_length {len})",
                    enc_past + len
                ),
            ));
        }
        Ok(EncoderBatch { len, past: enc_past, states, mask, past_kv: enc_past_kv })
    }
}

/// Every layer's cached key and value inputs (named by `key(i)`, `value(i)`), checked to be
/// `[batch, n_head, past, head_dim]` with one past length; returns that length and the caches.
fn read_caches<'a>(
    named: &NamedInputs<'a>,
    c: &Gpt2Config,
    batch: usize,
    key: fn(usize) -> String,
    value: fn(usize) -> String,
) -> Result<(usize, Vec<LayerCache<'a>>), ReferenceError> {
    let cache = |name: String| -> Result<(usize, Cow<'a, [f32]>), ReferenceError> {
        let t = named.take(&name)?;
        let data = float_data(&name, t)?;
        match t.shape[..] {
            [b, h, len, d] if b == batch && h == c.n_head && d == c.head_dim => Ok((len, data)),
            _ => Err(shape_error(
                &name,
                t,
                format!(
                    "[{batch}, {}, past length, {}] ([batch_size, n_head, past length, head_dim])",
                    c.n_head, c.head_dim
                ),
            )),
        }
    };
    let mut past_len = None;
    let mut caches = Vec::with_capacity(c.n_layer);
    for i in 0..c.n_layer {
        let (k_len, k) = cache(key(i))?;
        let (v_len, v) = cache(value(i))?;
        let first = *past_len.get_or_insert(k_len);
        for (name, len) in [(key(i), k_len), (value(i), v_len)] {
            if len != first {
                return Err(value_error(&name, format!("its past length {len} differs from {}'s {first}", key(0))));
            }
        }
        caches.push((k, v));
    }
    Ok((past_len.unwrap_or(0), caches))
}

/// A run's inputs by name, checked against the names the task's export takes.
struct NamedInputs<'a> {
    map: BTreeMap<&'a str, &'a HostTensor>,
    task: &'static str,
    expected: String,
}

impl<'a> NamedInputs<'a> {
    fn new(model: &ReferenceModel, inputs: &[(&'a str, &'a HostTensor)]) -> Result<NamedInputs<'a>, ReferenceError> {
        let names = model.input_names();
        let task = model.task.name();
        let expected = names.join(", ");
        let mut map = BTreeMap::new();
        for &(name, tensor) in inputs {
            if !names.iter().any(|n| n == name) {
                return Err(ReferenceError::UnknownInput { name: name.into(), task, expected });
            }
            if map.insert(name, tensor).is_some() {
                return Err(ReferenceError::DuplicateInput { name: name.into() });
            }
        }
        Ok(NamedInputs { map, task, expected })
    }

    fn take(&self, name: &str) -> Result<&'a HostTensor, ReferenceError> {
        self.map.get(name).copied().ok_or_else(|| ReferenceError::MissingInput {
            name: name.into(),
            task: self.task,
            expected: self.expected.clone(),
        })
    }
}

/// Int64 input data.
fn int_data<'a>(name: &str, t: &'a HostTensor) -> Result<&'a [i64], ReferenceError> {
    let data = t.as_i64().ok_or_else(|| ReferenceError::InputType {
        name: name.into(),
        expected: "int64",
        found: t.dtype_name(),
    })?;
    check_len(name, t, data.len())?;
    Ok(data)
}

/// Float input data as f32 (float16 inputs are widened).
fn float_data<'a>(name: &str, t: &'a HostTensor) -> Result<Cow<'a, [f32]>, ReferenceError> {
    let data = t.to_f32().ok_or_else(|| ReferenceError::InputType {
        name: name.into(),
        expected: "float (or float16)",
        found: t.dtype_name(),
    })?;
    check_len(name, t, data.len())?;
    Ok(data)
}

/// A tensor's data must fill its shape (its fields are public, so nothing else guarantees it).
fn check_len(name: &str, t: &HostTensor, len: usize) -> Result<(), ReferenceError> {
    let wanted = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if wanted == Some(len) {
        return Ok(());
    }
    let wanted = wanted.map_or_else(|| "more than memory holds".to_string(), |n| n.to_string());
    Err(value_error(name, format!("holds {len} values, but its shape {:?} needs {wanted}", t.shape)))
}

fn shape_error(name: &str, t: &HostTensor, expected: String) -> ReferenceError {
    ReferenceError::InputShape { name: name.into(), expected, found: t.shape.clone() }
}

fn value_error(name: &str, message: impl Into<String>) -> ReferenceError {
    ReferenceError::InputValue { name: name.into(), message: message.into() }
}

fn f32_tensor(shape: Vec<usize>, data: Vec<f32>) -> HostTensor {
    HostTensor { shape, data: HostData::F32(data) }
}

/// Row `r`'s slice `[H, past, D]` of a cache input `[batch, H, past, D]`.
fn row_cache<'c>(cache: &'c [f32], r: usize, c: &Gpt2Config, past: usize) -> &'c [f32] {
    let per_row = c.n_head * past * c.head_dim;
    &cache[r * per_row..(r + 1) * per_row]
}

/// `[S, E]` → `[H, S, D]`.
fn split_heads(x: ArrayView2<'_, f32>, c: &Gpt2Config) -> Array3<f32> {
    let d = c.head_dim;
    Array3::from_shape_fn((c.n_head, x.nrows(), d), |(h, i, j)| x[[i, h * d + j]])
}

/// Keys or values `[H, past + S, D]`: the row's cached `[H, past, D]` ones, then `new` `[S, E]` split into heads.
fn with_cache(past: Option<&[f32]>, new: ArrayView2<'_, f32>, c: &Gpt2Config) -> Array3<f32> {
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
fn self_attention_mask(mask: &[i64], seq: usize) -> Array2<f32> {
    let past = mask.len() - seq;
    Array2::from_shape_fn((seq, mask.len()), |(i, j)| if j <= past + i && mask[j] != 0 { 0.0 } else { f32::MIN })
}

/// The additive cross-attention mask, transformers' `invert_attention_mask`:
/// `(1 - encoder_attention_mask) · lowest f32`, the same for every query. `[S, encoder positions]`.
fn cross_attention_mask(mask: &[i64], seq: usize) -> Array2<f32> {
    Array2::from_shape_fn((seq, mask.len()), |(_, j)| (1.0 - mask[j] as f32) * f32::MIN)
}

/// Softmax over each row, evaluated in f64 and rounded once: PyTorch's vectorised `exp` cannot be
/// reproduced bit for bit, so this keeps the reference's own error out of the comparison.
fn softmax_rows(scores: &mut Array2<f32>) {
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
    fn load(w: &Weights, c: &Gpt2Config, stored_scope: &str) -> Result<LayerNorm, ReferenceError> {
        Ok(LayerNorm {
            gamma: vector(w, &format!("{stored_scope}.weight"), c.n_embd)?,
            beta: vector(w, &format!("{stored_scope}.bias"), c.n_embd)?,
            eps: c.layer_norm_epsilon,
        })
    }

    /// PyTorch's f32 CPU LayerNorm step for step: [`row_moments`], `rstd = 1 / √(var + eps)`, then
    /// `fma((x − mean)·rstd, γ, β)`.
    fn apply(&self, x: &Array2<f32>) -> Array2<f32> {
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
const MOMENT_LANES: usize = 8;
const MOMENT_CHUNK: usize = 16;

/// Per-lane Welford state: count, means and sums of squared deviations.
#[derive(Clone, Copy, Default)]
struct LaneMoments {
    count: usize,
    mean: [f32; MOMENT_LANES],
    m2: [f32; MOMENT_LANES],
}

impl LaneMoments {
    /// `AddMomentsVec`: merges `add` into `self`.
    fn merge(&mut self, add: &LaneMoments) {
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
fn row_moments(x: &[f32]) -> (f32, f32) {
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
enum Sum {
    /// `acc + a·b`, rounded twice, k in order: PyTorch's own loop for small batched matmuls.
    Plain,
    /// `fma(a, b, acc)`, rounded once, k in order from 0: the BLAS kernels behind PyTorch's CPU
    /// `addmm` (bit-exact with them for small inner sizes).
    Fused,
}

impl Sum {
    fn step(self, acc: f32, a: f32, b: f32) -> f32 {
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
fn batched_matmul_sum(inner: usize, rows: usize, cols: usize) -> Sum {
    if inner * rows * cols < 400 { Sum::Plain } else { Sum::Fused }
}

/// `a @ b`, each element summed over k in order.
fn matmul(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>, sum: Sum) -> Array2<f32> {
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
fn matmul_transposed(a: ArrayView2<'_, f32>, bt: ArrayView2<'_, f32>, sum: Sum) -> Array2<f32> {
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
    fn load(w: &Weights, stored_scope: &str, n_in: usize, n_out: usize) -> Result<Conv1D, ReferenceError> {
        Ok(Conv1D {
            weight: matrix(w, &format!("{stored_scope}.weight"), n_in, n_out)?,
            bias: vector(w, &format!("{stored_scope}.bias"), n_out)?,
        })
    }

    fn apply(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        matmul(x, self.weight.view(), Sum::Fused) + &self.bias
    }
}

impl Linear {
    /// `{name}.weight` `[n_out, n_in]` and, with `bias`, `{name}.bias` `[n_out]` (head weights, stored
    /// without the `transformer.` prefix).
    fn load(w: &Weights, name: &str, bias: bool, n_in: usize, n_out: usize) -> Result<Linear, ReferenceError> {
        let weight = matrix(w, &format!("{name}.weight"), n_out, n_in)?;
        let bias = if bias { Some(vector(w, &format!("{name}.bias"), n_out)?) } else { None };
        Ok(Linear { weight, bias })
    }

    fn apply(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        let y = matmul_transposed(x, self.weight.view(), Sum::Fused);
        match &self.bias {
            Some(b) => y + b,
            None => y,
        }
    }
}

impl Block {
    fn load(w: &Weights, c: &Gpt2Config, i: usize, cross: bool) -> Result<Block, ReferenceError> {
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
    fn load(w: &Weights, c: &Gpt2Config) -> Result<LmHead, ReferenceError> {
        if c.tie_word_embeddings {
            Ok(LmHead::Tied)
        } else {
            Ok(LmHead::Untied(matrix(w, "lm_head.weight", c.vocab_size, c.n_embd)?))
        }
    }
}

impl Head {
    fn load(w: &Weights, c: &Gpt2Config, task: Task) -> Result<Head, ReferenceError> {
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
    fn load(w: &Weights, c: &Gpt2Config) -> Result<SequenceSummary, ReferenceError> {
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
    fn apply(&self, b: &Batch<'_>, rows: &[RowOutput], e: usize) -> Result<(Vec<usize>, Vec<f32>), ReferenceError> {
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
fn values(w: &Weights, stored: &str, shape: &[usize]) -> Result<Vec<f32>, ReferenceError> {
    w.get(stored, shape)?.to_f32_vec().ok_or_else(|| ReferenceError::Weight {
        name: stored.into(),
        message: "cannot be read as floating point".into(),
    })
}

fn matrix(w: &Weights, stored: &str, rows: usize, cols: usize) -> Result<Array2<f32>, ReferenceError> {
    Array2::from_shape_vec((rows, cols), values(w, stored, &[rows, cols])?)
        .map_err(|e| ReferenceError::Weight { name: stored.into(), message: e.to_string() })
}

fn vector(w: &Weights, stored: &str, len: usize) -> Result<Array1<f32>, ReferenceError> {
    Ok(Array1::from_vec(values(w, stored, &[len])?))
}

/// `ACT2FN[name](x)` for every activation a GPT-2 config can name, in f64 rounded once.
fn activate(act: Activation, x: f32) -> f32 {
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
fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

/// The error function (stable Rust has none): `2/√π · e^(−x²) · Σ 2ⁿ x^(2n+1) / (2n+1)!!`, a series of
/// positive terms (no cancellation, relative error near 1e-15); beyond |x| = 6, erf is ±1 to
/// within 2e-17.
fn erf(x: f64) -> f64 {
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use safetensors::{Dtype, SafeTensors};

    use super::*;

    /// Agreement required with transformers' fp32 outputs.
    const TOLERANCE: f32 = 1e-5;

    type Tensors = BTreeMap<String, HostTensor>;
    type Inputs = Vec<(String, HostTensor)>;

    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    /// Every tensor of `dir/reference.safetensors` (written by models/make_*fixtures.py).
    fn reference(dir: &Path) -> Tensors {
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        file.tensors()
            .into_iter()
            .map(|(name, view)| {
                let (shape, data) = (view.shape().to_vec(), view.data());
                let tensor = match view.dtype() {
                    Dtype::F32 => HostTensor::f32(
                        shape,
                        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                    ),
                    Dtype::I64 => HostTensor::i64(
                        shape,
                        data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
                    ),
                    other => panic!("{name}: unexpected dtype {other:?}"),
                };
                (name, tensor.unwrap())
            })
            .collect()
    }

    fn model(dir: &Path, task: Task) -> ReferenceModel {
        let ckpt = Checkpoint::open(dir).unwrap();
        ReferenceModel::load(&ckpt, task).unwrap()
    }

    fn get<'t>(refs: &'t Tensors, name: &str) -> &'t HostTensor {
        refs.get(name).unwrap_or_else(|| panic!("no `{name}` in the reference file"))
    }

    /// `refs[{prefix}{name}]` as input `name`, for each name.
    fn take(refs: &Tensors, prefix: &str, names: &[&str]) -> Inputs {
        names.iter().map(|n| (n.to_string(), get(refs, &format!("{prefix}{n}")).clone())).collect()
    }

    /// An f32 tensor of zeros (empty when a dimension is 0).
    fn zeros(shape: Vec<usize>) -> HostTensor {
        let n = shape.iter().product();
        HostTensor::f32(shape, vec![0.0; n]).unwrap()
    }

    /// Per layer, past key and value inputs: `refs[{from}present.{i}.key]`... or empty ones.
    fn pasts(m: &ReferenceModel, refs: &Tensors, from: Option<&str>, batch: usize, cross: bool) -> Inputs {
        let c = &m.config;
        let mut out = Vec::new();
        for i in 0..c.n_layer {
            let names = if cross {
                [(contract::past_cross_key(i), "encoder.key"), (contract::past_cross_value(i), "encoder.value")]
            } else {
                [(contract::past_key(i), "key"), (contract::past_value(i), "value")]
            };
            for (name, kind) in names {
                let t = match from {
                    Some(p) => get(refs, &format!("{p}present.{i}.{kind}")).clone(),
                    None => zeros(vec![batch, c.n_head, 0, c.head_dim]),
                };
                out.push((name, t));
            }
        }
        out
    }

    /// Largest |actual − expected| over real-token elements and over all elements.
    #[derive(Clone, Copy, Debug, Default)]
    struct Errors {
        real: f32,
        all: f32,
    }

    impl Errors {
        fn max(self, o: Errors) -> Errors {
            Errors { real: self.real.max(o.real), all: self.all.max(o.all) }
        }
    }

    fn compare(actual: &HostTensor, expected: &HostTensor, real: &dyn Fn(&[usize]) -> bool) -> Errors {
        let (a, e) = (actual.as_f32().unwrap(), expected.as_f32().unwrap());
        let shape = &actual.shape;
        let mut index = vec![0; shape.len()];
        let mut errors = Errors::default();
        for flat in 0..a.len() {
            let mut rest = flat;
            for k in (0..shape.len()).rev() {
                index[k] = rest % shape[k];
                rest /= shape[k];
            }
            let d = (a[flat] - e[flat]).abs();
            let d = if d.is_nan() { f32::INFINITY } else { d };
            errors.all = errors.all.max(d);
            if real(&index) {
                errors.real = errors.real.max(d);
            }
        }
        errors
    }

    /// Runs `m` and compares each output `o` with `refs[{prefix}o]`; `real(o, index)` says whether an
    /// element belongs to a real (unpadded) token.
    fn step(
        m: &ReferenceModel,
        refs: &Tensors,
        prefix: &str,
        inputs: &[(String, HostTensor)],
        real: &dyn Fn(&str, &[usize]) -> bool,
    ) -> Errors {
        let named: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let outputs = m.run(&named).unwrap_or_else(|e| panic!("{prefix}: {e}"));
        let mut errors = Errors::default();
        for (name, actual) in &outputs {
            let expected = get(refs, &format!("{prefix}{name}"));
            assert_eq!(actual.shape, expected.shape, "{prefix}{name}");
            let e = compare(actual, expected, &|index| real(name, index));
            eprintln!("    {} {prefix}{name}: real {:.2e}, all {:.2e}", m.task.name(), e.real, e.all);
            errors = errors.max(e);
        }
        errors
    }

    /// Real-token elements by `mask` (`[lead.., past + sequence]`): `present.{i}.key/value`
    /// `[batch, H, T, D]` by key slot; encoder presents everywhere; other outputs `[lead.., sequence, ..]`
    /// by position.
    fn by_mask(mask: &HostTensor, past: usize) -> impl Fn(&str, &[usize]) -> bool + '_ {
        let values = mask.as_i64().unwrap();
        let lead = mask.shape.len() - 1;
        let total = mask.shape[lead];
        move |name: &str, index: &[usize]| {
            if name.contains(".encoder.") {
                return true;
            }
            if name.starts_with("present.") {
                return values[index[0] * total + index[2]] != 0;
            }
            let row = index[..lead].iter().zip(&mask.shape).fold(0, |acc, (&i, &n)| acc * n + i);
            values[row * total + past + index[lead]] != 0
        }
    }

    /// Prints a fixture's errors and checks them: real tokens are what must agree; padding rows
    /// agree as well because their fully masked attention is reproduced too.
    fn report(fixture: &str, errors: Errors) {
        eprintln!("{fixture}: max abs error {:.2e} on real tokens, {:.2e} everywhere", errors.real, errors.all);
        assert!(errors.real <= TOLERANCE, "{fixture}: {:.3e} > {TOLERANCE:e} on real tokens", errors.real);
        assert!(errors.all <= TOLERANCE, "{fixture}: {:.3e} > {TOLERANCE:e} on padding", errors.all);
    }

    /// models/tiny-* (make_fixtures.py): a.* a prompt, b.* one more token fed a's presents, c.* a
    /// left-padded batch; with past key/values, and a.*, c.* again without.
    fn language_model_fixture(name: &str, reference_dir: &str) -> Errors {
        let dir = models().join(name);
        let refs = reference(&models().join(reference_dir));
        let with_past = model(&dir, Task::TextGenerationWithPast);
        let without = model(&dir, Task::TextGeneration);
        let mut errors = Errors::default();
        for (prefix, past_from) in [("a.", None), ("b.", Some("a.")), ("c.", None)] {
            let mut inputs = take(&refs, prefix, &["input_ids", "attention_mask", "position_ids"]);
            let (ids, mask) = (&inputs[0].1, &inputs[1].1);
            let (batch, past) = (ids.shape[0], mask.shape[1] - ids.shape[1]);
            let real = by_mask(get(&refs, &format!("{prefix}attention_mask")), past);
            inputs.extend(pasts(&with_past, &refs, past_from, batch, false));
            errors = errors.max(step(&with_past, &refs, prefix, &inputs, &real));
            if past_from.is_none() {
                inputs.truncate(3);
                errors = errors.max(step(&without, &refs, prefix, &inputs, &real));
            }
        }
        errors
    }

    #[test]
    fn tiny_default_matches_transformers() {
        report("tiny-default", language_model_fixture("tiny-default", "tiny-default"));
    }

    #[test]
    fn tiny_inner_gelu_matches_transformers() {
        report("tiny-inner-gelu", language_model_fixture("tiny-inner-gelu", "tiny-inner-gelu"));
    }

    #[test]
    fn tiny_scaled_attn_matches_transformers() {
        report("tiny-scaled-attn", language_model_fixture("tiny-scaled-attn", "tiny-scaled-attn"));
    }

    #[test]
    fn tiny_untied_matches_transformers() {
        report("tiny-untied", language_model_fixture("tiny-untied", "tiny-untied"));
    }

    #[test]
    fn tiny_default_f16_and_bf16_weights_match_transformers() {
        report("tiny-default-f16", language_model_fixture("tiny-default-f16", "tiny-default-f16"));
        report("tiny-default-bf16", language_model_fixture("tiny-default-bf16", "tiny-default-bf16"));
    }

    #[test]
    fn sharded_and_unprefixed_checkpoints_match_transformers() {
        report("tiny-default-sharded", language_model_fixture("tiny-default-sharded", "tiny-default"));
        report("tiny-base-noprefix", language_model_fixture("tiny-base-noprefix", "tiny-default"));
    }

    fn heads() -> PathBuf {
        models().join("heads")
    }

    #[test]
    fn sequence_classification_matches_transformers() {
        for name in ["seq-cls", "seq-cls-nopad"] {
            let dir = heads().join(name);
            let refs = reference(&dir);
            let m = model(&dir, Task::TextClassification);
            let inputs = take(&refs, "", &["input_ids", "attention_mask"]);
            report(name, step(&m, &refs, "", &inputs, &|_, _| true));
        }
    }

    #[test]
    fn token_classification_matches_transformers() {
        let dir = heads().join("tok-cls");
        let refs = reference(&dir);
        let m = model(&dir, Task::TokenClassification);
        let inputs = take(&refs, "", &["input_ids", "attention_mask"]);
        report("tok-cls", step(&m, &refs, "", &inputs, &by_mask(get(&refs, "attention_mask"), 0)));
    }

    #[test]
    fn question_answering_matches_transformers() {
        let dir = heads().join("qa");
        let refs = reference(&dir);
        let m = model(&dir, Task::QuestionAnswering);
        let inputs = take(&refs, "", &["input_ids", "attention_mask"]);
        report("qa", step(&m, &refs, "", &inputs, &by_mask(get(&refs, "attention_mask"), 0)));
    }

    #[test]
    fn multiple_choice_matches_transformers() {
        for name in ["double-heads", "double-heads-mean", "double-heads-last"] {
            let dir = heads().join(name);
            let refs = reference(&dir);
            let m = model(&dir, Task::MultipleChoice);
            let inputs = take(&refs, "", &["input_ids", "attention_mask", "mc_token_ids"]);
            let mask = get(&refs, "attention_mask");
            let tokens = by_mask(mask, 0);
            let (values, choices, seq) = (mask.as_i64().unwrap(), mask.shape[1], mask.shape[2]);
            let mc = get(&refs, "mc_token_ids").as_i64().unwrap();
            let real = |output: &str, index: &[usize]| match (output, m.config.summary.kind()) {
                // cls_index: the summarised token; first, last, mean: the position in every choice.
                ("mc_logits", Ok(SummaryType::ClsIndex)) => {
                    let row = index[0] * choices + index[1];
                    values[row * seq + mc[row] as usize] != 0
                }
                ("mc_logits", _) => (0..choices).all(|ch| values[(index[0] * choices + ch) * seq + index[1]] != 0),
                _ => tokens(output, index),
            };
            report(name, step(&m, &refs, "", &inputs, &real));
        }
    }

    #[test]
    fn base_model_matches_transformers() {
        let dir = heads().join("base");
        let refs = reference(&dir);
        let plain = model(&dir, Task::FeatureExtraction);
        let inputs = take(&refs, "p.", &["input_ids", "attention_mask"]);
        let mut errors = step(&plain, &refs, "p.", &inputs, &by_mask(get(&refs, "p.attention_mask"), 0));
        let cached = model(&dir, Task::FeatureExtractionWithPast);
        for (prefix, from, past) in [("q.", None, 0), ("r.", Some("q."), 6)] {
            let mut inputs = take(&refs, prefix, &["input_ids", "attention_mask", "position_ids"]);
            inputs.extend(pasts(&cached, &refs, from, 1, false));
            let real = by_mask(get(&refs, &format!("{prefix}attention_mask")), past);
            errors = errors.max(step(&cached, &refs, prefix, &inputs, &real));
        }
        report("base", errors);
    }

    #[test]
    fn cross_attention_matches_transformers() {
        let dir = heads().join("cross");
        let refs = reference(&dir);
        let cached = model(&dir, Task::TextGenerationWithPast);
        let names = ["input_ids", "attention_mask", "position_ids"];
        let encoder = ["encoder_hidden_states", "encoder_attention_mask"];
        // x.*: the prompt with the encoder states and empty caches.
        let mut inputs = take(&refs, "x.", &names);
        inputs.extend(pasts(&cached, &refs, None, 2, false));
        inputs.extend(take(&refs, "x.", &encoder));
        inputs.extend(pasts(&cached, &refs, None, 2, true));
        let real = by_mask(get(&refs, "x.attention_mask"), 0);
        let mut errors = step(&cached, &refs, "x.", &inputs, &real);
        // Without a cache: the same logits.
        let plain = model(&dir, Task::TextGeneration);
        let mut inputs = take(&refs, "x.", &names);
        inputs.extend(take(&refs, "x.", &encoder));
        errors = errors.max(step(&plain, &refs, "x.", &inputs, &real));
        // y.*: one more token; the encoder keys and values come from x's cache, the states are empty.
        let mut inputs = take(&refs, "y.", &names);
        inputs.extend(pasts(&cached, &refs, Some("x."), 2, false));
        inputs.push(("encoder_hidden_states".into(), zeros(vec![2, 0, cached.config.n_embd])));
        inputs.extend(take(&refs, "y.", &["encoder_attention_mask"]));
        inputs.extend(pasts(&cached, &refs, Some("x."), 2, true));
        let real = by_mask(get(&refs, "y.attention_mask"), 6);
        errors = errors.max(step(&cached, &refs, "y.", &inputs, &real));
        report("cross", errors);
    }

    #[test]
    fn config_variants_match_transformers() {
        let dir = heads().join("variants");
        let refs = reference(&dir);
        let m = model(&dir, Task::TextGeneration);
        let inputs = take(&refs, "", &["input_ids", "attention_mask", "position_ids"]);
        report("variants", step(&m, &refs, "", &inputs, &|_, _| true));
    }

    #[test]
    fn every_activation_matches_transformers() {
        for name in Activation::NAMES {
            let dir = heads().join(format!("act-{name}"));
            let refs = reference(&dir);
            let m = model(&dir, Task::TextGeneration);
            assert_eq!(m.config.activation_name, name);
            let inputs = take(&refs, "", &["input_ids", "attention_mask", "position_ids"]);
            report(&format!("act-{name}"), step(&m, &refs, "", &inputs, &|_, _| true));
        }
    }

    /// The error of running `m` on `inputs`.
    fn run_error(m: &ReferenceModel, inputs: &[(String, HostTensor)]) -> String {
        let named: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        match m.run(&named) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_inputs_are_refused_with_readable_messages() {
        let dir = models().join("tiny-default");
        let refs = reference(&dir);
        let m = model(&dir, Task::TextGenerationWithPast);
        let mut good = take(&refs, "a.", &["input_ids", "attention_mask", "position_ids"]);
        good.extend(pasts(&m, &refs, None, 1, false));
        let with = |name: &str, t: HostTensor| -> Inputs {
            good.iter().map(|(n, old)| (n.clone(), if n == name { t.clone() } else { old.clone() })).collect()
        };
        let cases: Vec<(Inputs, &[&str])> = vec![
            (good[1..].to_vec(), &["input `input_ids` is missing", "past_key_values.0.key"]),
            (
                [good.clone(), vec![("token_type_ids".into(), good[0].1.clone())]].concat(),
                &["`token_type_ids` is not an input of the text-generation-with-past export"],
            ),
            ([good.clone(), vec![good[0].clone()]].concat(), &["`input_ids` is given more than once"]),
            (with("input_ids", HostTensor::f32(vec![1, 7], vec![0.0; 7]).unwrap()), &["holds float, expected int64"]),
            (
                with("input_ids", HostTensor::i64(vec![1, 7], vec![1000; 7]).unwrap()),
                &["token id 1000", "vocab_size 1000"],
            ),
            (with("position_ids", HostTensor::i64(vec![1, 7], vec![64; 7]).unwrap()), &["position 64", "0..64"]),
            (
                with("input_ids", HostTensor { shape: vec![1, 7], data: HostData::I64(vec![1; 3]) }),
                &["holds 3 values", "[1, 7] needs 7"],
            ),
            (
                with("attention_mask", HostTensor::i64(vec![1, 6], vec![1; 6]).unwrap()),
                &["[1, 7]", "past_sequence_length 0"],
            ),
            (
                with("past_key_values.1.value", zeros(vec![1, 4, 2, 8])),
                &["past_key_values.1.value", "past length 2 differs from past_key_values.0.key's 0"],
            ),
            (with("past_key_values.0.key", zeros(vec![1, 3, 0, 8])), &["[1, 4, past length, 8]"]),
        ];
        for (inputs, needles) in cases {
            let e = run_error(&m, &inputs);
            assert!(needles.iter().all(|n| e.contains(n)), "{e}");
        }

        let nopad = heads().join("seq-cls-nopad");
        let m = model(&nopad, Task::TextClassification);
        let ids = HostTensor::i64(vec![2, 3], vec![1; 6]).unwrap();
        let e = run_error(&m, &[("input_ids".into(), ids.clone()), ("attention_mask".into(), ids)]);
        assert!(e.contains("no pad_token_id"), "{e}");

        let dir = heads().join("double-heads");
        let refs = reference(&dir);
        let m = model(&dir, Task::MultipleChoice);
        let mut inputs = take(&refs, "", &["input_ids", "attention_mask"]);
        inputs.push(("mc_token_ids".into(), HostTensor::i64(vec![2, 3], vec![0, 1, 6, 0, 0, 0]).unwrap()));
        let e = run_error(&m, &inputs);
        assert!(e.contains("mc_token_ids") && e.contains("index 6") && e.contains("0..6"), "{e}");
    }

    #[test]
    fn float16_caches_are_widened() {
        let dir = models().join("tiny-default");
        let refs = reference(&dir);
        let m = model(&dir, Task::TextGenerationWithPast);
        let mut inputs = take(&refs, "b.", &["input_ids", "attention_mask", "position_ids"]);
        for (name, past) in pasts(&m, &refs, Some("a."), 1, false) {
            let halves = past.as_f32().unwrap().iter().map(|&v| half::f16::from_f32(v)).collect();
            inputs.push((name, HostTensor { shape: past.shape.clone(), data: HostData::F16(halves) }));
        }
        let named: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let outputs = m.run(&named).unwrap();
        let e = compare(&outputs[0].1, get(&refs, "b.logits"), &|_| true);
        assert!(e.all < 0.05, "{e:?}");
    }

    #[test]
    fn a_head_without_its_weights_is_named() {
        let ckpt = Checkpoint::open(&models().join("tiny-default")).unwrap();
        let e = ReferenceModel::load(&ckpt, Task::TextClassification).err().unwrap().to_string();
        assert!(e.contains("score.weight"), "{e}");
    }

    #[test]
    fn erf_matches_known_values() {
        // mpmath at 30 digits, rounded to f64.
        let known = [
            (0.0, 0.0),
            (1e-3, 0.0011283787909692364),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (-1.5, -0.9661051464753108),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
            (4.5, 0.9999999998033839),
            (5.9, 0.9999999999999999),
            (7.0, 1.0),
        ];
        for (x, want) in known {
            let got = erf(x);
            assert!((got - want).abs() <= 1e-15 * want.abs().max(1e-300) + 1e-300, "erf({x}) = {got}, want {want}");
        }
        assert!(erf(f64::NAN).is_nan());
    }
}
