//! The GPT-2 causal-LM graph with past key/values, built from checkpoint weights.
//!
//! Mirrors `GPT2LMHeadModel` in transformers' `modeling_gpt2.py`: token and
//! position embeddings, `n_layer` blocks (ln_1 → attention → residual, ln_2 →
//! MLP → residual), the final LayerNorm and the LM head tied to `wte` (or a
//! separate `lm_head.weight` when the config unties them). Inputs and outputs
//! follow the export contract in [`contract`]: optimum's names, dtypes and
//! dimension names, one graph for prefill (past length 0) and decode.

pub mod attention;
pub mod contract;
pub mod fused;
pub mod heads;
pub(crate) mod linear;
pub mod mlp;
pub mod precision;
pub mod random_init;
pub mod search;
pub mod task;

pub use linear::single_linear_graph;
pub use precision::{FloatType, Int4Activations, KvCache, Part, Precision, PrecisionError, Quantize, Target};
pub use task::Task;

use crate::checkpoint::{Checkpoint, WeightError, Weights};
use crate::ir::{DType, Dim, Graph, GraphBuilder, GraphError, ValueId};
use linear::{Ctx, Table, cast_to, in_dtype};

/// Opsets the graph can be emitted in.
pub const OPSETS: std::ops::RangeInclusive<i64> = 14..=23;
/// The default opset.
pub const DEFAULT_OPSET: i64 = 18;

/// Errors building the graph.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("--opset {0}: not supported; choose one from {min} to {max}", min = OPSETS.start(), max = OPSETS.end())]
    Opset(i64),
    #[error(transparent)]
    Precision(#[from] PrecisionError),
    #[error("{0}")]
    Task(String),
}

/// Which interface the graph has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GraphForm {
    /// The export contract ([`contract`]): optimum's names and types.
    #[default]
    Standard,
    /// The decoder subgraph of ONNX Runtime's search operators (int32 ids, positions and mask,
    /// `past_{i}`/`present_{i}` with key and value stacked, last-position logits): see
    /// [`contract::declare_search_decoder_inputs`]. Language models with a cache only.
    SearchDecoder,
}

/// Choices that shape the graph.
#[derive(Clone, Debug)]
pub struct GraphOptions {
    pub opset: i64,
    pub precision: Precision,
    /// What the graph computes; `None`: the task config.json's `architectures` implies.
    pub task: Option<Task>,
    pub form: GraphForm,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions { opset: DEFAULT_OPSET, precision: Precision::default(), task: None, form: GraphForm::Standard }
    }
}

impl GraphOptions {
    /// The task to build for `config`.
    /// Refuses choices no graph can express: an opset outside 14..=23 or older than the formats
    /// need, incompatible precision choices. Needs nothing but the options.
    pub fn validate(&self) -> Result<(), BuildError> {
        if !OPSETS.contains(&self.opset) {
            return Err(BuildError::Opset(self.opset));
        }
        self.precision.validate()?;
        self.precision.validate_opset(self.opset)?;
        Ok(())
    }

    pub fn task_for(&self, config: &crate::checkpoint::Gpt2Config) -> Result<Task, BuildError> {
        match self.task {
            Some(t) => Ok(t),
            None => Task::from_architectures(&config.architectures).map_err(BuildError::Task),
        }
    }
}

/// Builds the graph of `options.task` (by default the task the checkpoint's `architectures`
/// implies; `GPT2LMHeadModel` with past key/values for most checkpoints).
///
/// The residual stream, LayerNorms, the attention mask and softmax stay in
/// f32 in every format; matmuls and their weights use the compute type
/// (fp16 with `--dtype fp16`) or the chosen quantization.
pub fn build_causal_lm(ckpt: &Checkpoint, options: &GraphOptions) -> Result<Graph, BuildError> {
    options.validate()?;
    let p = &options.precision;
    let c = &ckpt.config;
    let w = &ckpt.weights;
    let search_decoder = options.form == GraphForm::SearchDecoder;
    let ctx = Ctx { w, c, p, last_position_only: search_decoder };
    let compute = p.compute();
    let task = options.task_for(c)?;
    let mut b = GraphBuilder::new("gpt2c", options.opset);
    if search_decoder && (task != Task::TextGenerationWithPast || c.add_cross_attention) {
        return Err(BuildError::Task(format!(
            "a search operator's decoder is a language model with its cache (text-generation-with-past, \
             no cross-attention), not {task}{}",
            if c.add_cross_attention { " with add_cross_attention" } else { "" }
        )));
    }
    let io = if search_decoder {
        contract::declare_search_decoder_inputs(&mut b, c, p.io())?
    } else {
        contract::declare_inputs(&mut b, c, p.io(), task)?
    };
    // Multiple choice runs every (batch, choice) pair as one row: [batch·choices, sequence].
    let (ids, attention_mask) = if task == Task::MultipleChoice {
        let flatten = |b: &mut GraphBuilder, x: ValueId| -> Result<ValueId, GraphError> {
            let shape = b.shape_of(x)?;
            let last = b.const_i64(&[2])?;
            let seq = b.gather(shape, last, 0)?;
            let rows = b.const_i64(&[-1])?;
            let target = b.concat(&[rows, seq], 0)?;
            b.node1(crate::ir::Op::Reshape, &[x, target])
        };
        (flatten(&mut b, io.input_ids)?, flatten(&mut b, io.attention_mask)?)
    } else {
        (io.input_ids, io.attention_mask)
    };

    let mut wte = Table::new("wte", w.body("wte.weight", &[c.vocab_size, c.n_embd])?);
    let h = b.scoped("embeddings", |b| {
        let tokens = b.scoped("wte", |b| wte.embed(b, &ctx, ids))?;
        let wpe = in_dtype(w.body("wpe.weight", &[c.n_positions, c.n_embd])?, compute, "wpe")?;
        let wpe = b.initializer("wpe.weight", wpe)?;
        let positions = b.scoped("wpe", |b| {
            // Without position_ids, positions 0.. as transformers numbers them then.
            let position_ids = match io.position_ids {
                Some(p) => p,
                None => {
                    let seq = b.dim_of(ids, 1)?;
                    let (zero, one) = (b.scalar_i64(0)?, b.scalar_i64(1)?);
                    let range = b.range(zero, seq, one)?;
                    b.unsqueeze(range, &[0])?
                }
            };
            let rows = b.gather(wpe, position_ids, 0)?;
            cast_to(b, rows, DType::F32)
        })?;
        Ok::<_, BuildError>(b.add(tokens, positions)?)
    })?;
    let mask = b.scoped("attention_mask", |b| attention::attention_bias(b, ids, attention_mask, DType::F32))?;

    let cross = match &io.encoder {
        Some(enc) => {
            let mask_bias = b.scoped("encoder_attention_mask", |b| attention::encoder_attention_bias(b, enc.mask))?;
            Some(Cross { states: enc.states, mask_bias, past: enc.past.clone() })
        }
        None => None,
    };
    let shared_cache = p.kv_cache == KvCache::Shared;
    if shared_cache && (!task.with_past() || cross.is_some()) {
        return Err(BuildError::Task(format!(
            "--kv-cache shared keeps a cache of self-attention: it needs a task with past key/values \
             (text-generation-with-past, feature-extraction-with-past) and no cross-attention, not {task}{}",
            if cross.is_some() { " with add_cross_attention" } else { "" }
        )));
    }
    let (h, presents, cross_presents) = if fused::applies(p) && task.with_past() && cross.is_none() {
        let lengths = if shared_cache {
            Some(b.scoped("attention_mask", |b| attention::cache_lengths(b, attention_mask))?)
        } else {
            None
        };
        let inputs = fused::AttentionInputs { mask_bias: mask, lengths };
        let (h, presents) = fused::blocks(&mut b, &ctx, h, inputs, &io.past)?;
        (h, presents, Vec::new())
    } else {
        portable_blocks(&mut b, &ctx, h, mask, &io.past, cross.as_ref())?
    };
    let io_type = p.io();
    let (batch, seq) = (contract::batch_dim(c, task), Dim::sym(contract::SEQUENCE));
    let lm_logits = |b: &mut GraphBuilder, wte: &mut Table| {
        b.scoped("lm_head", |b| {
            let h = cast_to(b, h, compute)?;
            // Tied (the default): the head reads wte, stored once.
            let logits = if c.tie_word_embeddings {
                wte.head(b, &ctx, h)?
            } else {
                Table::new("lm_head", w.get("lm_head.weight", &[c.vocab_size, c.n_embd])?).head(b, &ctx, h)?
            };
            Ok::<_, BuildError>(cast_to(b, logits, io_type)?)
        })
    };
    let vocab = Dim::fixed(c.vocab_size as i64);
    let labels = Dim::fixed(c.num_labels as i64);
    if search_decoder {
        let logits = lm_logits(&mut b, &mut wte)?;
        contract::declare_search_decoder_outputs(&mut b, c, io_type, logits, &presents)?;
        return Ok(b.finish());
    }
    match task {
        Task::TextGeneration | Task::TextGenerationWithPast => {
            let logits = lm_logits(&mut b, &mut wte)?;
            contract::declare_output(&mut b, logits, "logits", io_type, vec![batch, seq, vocab])?;
        }
        Task::FeatureExtraction | Task::FeatureExtractionWithPast => {
            let hidden = cast_to(&mut b, h, io_type)?;
            let width = Dim::fixed(c.n_embd as i64);
            contract::declare_output(&mut b, hidden, "last_hidden_state", io_type, vec![batch, seq, width])?;
        }
        Task::TextClassification => {
            let logits = b.scoped("score", |b| heads::sequence_classification(b, &ctx, ids, h))?;
            let logits = cast_to(&mut b, logits, io_type)?;
            contract::declare_output(&mut b, logits, "logits", io_type, vec![batch, labels])?;
        }
        Task::TokenClassification => {
            let logits = b.scoped("classifier", |b| heads::token_classification(b, &ctx, h))?;
            let logits = cast_to(&mut b, logits, io_type)?;
            contract::declare_output(&mut b, logits, "logits", io_type, vec![batch, seq, labels])?;
        }
        Task::QuestionAnswering => {
            let (start, end) = b.scoped("qa_outputs", |b| heads::question_answering(b, &ctx, h))?;
            let (start, end) = (cast_to(&mut b, start, io_type)?, cast_to(&mut b, end, io_type)?);
            contract::declare_output(&mut b, start, "start_logits", io_type, vec![batch.clone(), seq.clone()])?;
            contract::declare_output(&mut b, end, "end_logits", io_type, vec![batch, seq])?;
        }
        Task::MultipleChoice => {
            let mc_token_ids =
                io.mc_token_ids.ok_or_else(|| BuildError::Task("multiple-choice needs mc_token_ids".into()))?;
            // Back to [batch, choices, sequence, ...].
            let unflatten = |b: &mut GraphBuilder, x: ValueId, last: i64| -> Result<ValueId, GraphError> {
                let shape = b.shape_of(io.input_ids)?;
                let tail = b.const_i64(&[last])?;
                let target = b.concat(&[shape, tail], 0)?;
                b.node1(crate::ir::Op::Reshape, &[x, target])
            };
            let logits = lm_logits(&mut b, &mut wte)?;
            let logits = unflatten(&mut b, logits, c.vocab_size as i64)?;
            let h4 = unflatten(&mut b, h, c.n_embd as i64)?;
            let (mc, dims) =
                b.scoped("multiple_choice_head", |b| heads::multiple_choice(b, &ctx, h4, h, mc_token_ids))?;
            let mc = cast_to(&mut b, mc, io_type)?;
            let choices = Dim::sym(contract::CHOICES);
            contract::declare_output(&mut b, logits, "logits", io_type, vec![batch, choices, seq, vocab])?;
            contract::declare_output(&mut b, mc, "mc_logits", io_type, dims)?;
        }
    }
    if task.with_past() {
        contract::declare_presents(&mut b, c, io_type, &presents)?;
        if cross.is_some() {
            contract::declare_cross_presents(&mut b, c, io_type, &cross_presents)?;
        }
    }
    Ok(b.finish())
}

/// Per layer: (key, value).
type Caches = Vec<(ValueId, ValueId)>;

/// What cross-attention reads in every layer.
struct Cross {
    states: ValueId,
    /// `[batch, 1, 1, encoder positions]`, f32.
    mask_bias: ValueId,
    /// Per layer, with a cache.
    past: Vec<(ValueId, ValueId)>,
}

/// The transformer blocks in standard operators and the final LayerNorm over the embeddings `h`;
/// returns the final normalized hidden state and each layer's (key, value) cache.
fn portable_blocks(
    b: &mut GraphBuilder,
    ctx: &Ctx<'_>,
    mut h: ValueId,
    mask: ValueId,
    past: &[(ValueId, ValueId)],
    cross: Option<&Cross>,
) -> Result<(ValueId, Caches, Caches), BuildError> {
    let (c, w, compute) = (ctx.c, ctx.w, ctx.p.compute());
    let mut presents = Vec::with_capacity(c.n_layer);
    let mut cross_presents = Vec::new();
    for i in 0..c.n_layer {
        let past = past.get(i).copied();
        let (next, present) = b.scoped(&format!("h.{i}"), |b| {
            let prefix = format!("h.{i}");
            let x = layer_norm(b, w, &format!("{prefix}.ln_1"), h, c.n_embd, c.layer_norm_epsilon)?;
            let x = cast_to(b, x, compute)?;
            let (attn, present) =
                b.scoped("attn", |b| attention::self_attention(b, ctx, i, &format!("{prefix}.attn"), x, past, mask))?;
            let attn = cast_to(b, attn, DType::F32)?;
            let h = attention::last_position_marker(b, ctx, "residual_rows", h, i + 1 == c.n_layer)?;
            let mut h = b.add(h, attn)?;
            if let Some(cr) = cross {
                let x = layer_norm(b, w, &format!("{prefix}.ln_cross_attn"), h, c.n_embd, c.layer_norm_epsilon)?;
                let x = cast_to(b, x, compute)?;
                let (out, present) = b.scoped("crossattention", |b| {
                    let scope = format!("{prefix}.crossattention");
                    attention::cross_attention(b, ctx, i, &scope, x, cr.states, cr.past.get(i).copied(), cr.mask_bias)
                })?;
                cross_presents.push(present);
                let out = cast_to(b, out, DType::F32)?;
                h = b.add(h, out)?;
            }
            let x = layer_norm(b, w, &format!("{prefix}.ln_2"), h, c.n_embd, c.layer_norm_epsilon)?;
            let x = cast_to(b, x, compute)?;
            let mlp = b.scoped("mlp", |b| mlp::mlp(b, ctx, &format!("{prefix}.mlp"), x))?;
            let mlp = cast_to(b, mlp, DType::F32)?;
            Ok::<_, BuildError>((b.add(h, mlp)?, present))
        })?;
        h = next;
        presents.push(present);
    }
    let h = layer_norm(b, w, "ln_f", h, c.n_embd, c.layer_norm_epsilon)?;
    Ok((h, presents, cross_presents))
}

/// Adds a body weight (named as inside `GPT2Model`) as an initializer.
pub(crate) fn weight(b: &mut GraphBuilder, w: &Weights, name: &str, shape: &[usize]) -> Result<ValueId, BuildError> {
    let t = w.body(name, shape)?;
    Ok(b.initializer(name, t)?)
}

/// `LayerNorm` with the checkpoint's `{scope}.weight` / `{scope}.bias`, in f32.
pub(crate) fn layer_norm(
    b: &mut GraphBuilder,
    w: &Weights,
    scope: &str,
    x: ValueId,
    width: usize,
    eps: f32,
) -> Result<ValueId, BuildError> {
    let name = scope.rsplit('.').next().unwrap_or(scope);
    b.scoped(name, |b| {
        let g = weight(b, w, &format!("{scope}.weight"), &[width])?;
        let beta = weight(b, w, &format!("{scope}.bias"), &[width])?;
        Ok(b.layer_norm(x, g, beta, eps)?)
    })
}
