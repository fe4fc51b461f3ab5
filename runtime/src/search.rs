//! Exports whose graph generates (`gpt2c export --generation`): ONNX Runtime's GreedySearch,
//! BeamSearch or Sampling node runs the whole search in one `run`, fed as its documentation says
//! (int32 `input_ids` left-padded with the pad token and `attention_mask`, `max_length` as the
//! total length, …). Settings the node fixed at export (its attributes, recorded in the
//! `gpt2c.search` metadata) must match the call's; settings it has no input for are refused. The
//! operator marks every pad token of a prompt as padding, so a prompt holding the pad id is
//! refused too (transformers would attend to it).

use serde::Deserialize;

use crate::backend::{GraphRunner, RuntimeError};
use crate::generate::{
    EarlyStopping, FinishReason, GenerateError, GenerationConfig, GenerationOutput, Mode, SequenceResult,
};
use crate::model::{ExportedModel, ModelError};
use crate::tensor::{HostData, HostTensor};

/// The operator an export's graph runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchOp {
    Greedy,
    Beam,
    Sampling,
}

impl SearchOp {
    /// From the `gpt2c.generation` metadata value.
    pub fn from_name(name: &str) -> Option<SearchOp> {
        match name {
            "greedy-search" => Some(SearchOp::Greedy),
            "beam-search" => Some(SearchOp::Beam),
            "sampling" => Some(SearchOp::Sampling),
            _ => None,
        }
    }

    pub fn op_type(self) -> &'static str {
        match self {
            SearchOp::Greedy => "GreedySearch",
            SearchOp::Beam => "BeamSearch",
            SearchOp::Sampling => "Sampling",
        }
    }
}

/// The node's attributes, as the export recorded them (`gpt2c.search`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Fixed {
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    pub no_repeat_ngram_size: i64,
    pub early_stopping: bool,
    pub temperature: f32,
    pub top_p: f32,
}

/// An export whose graph generates, loaded.
pub struct InGraphSearch {
    runner: Box<dyn GraphRunner>,
    pub op: SearchOp,
    pub fixed: Fixed,
    n_positions: usize,
    vocab: usize,
}

fn setting(field: &str, message: String) -> GenerateError {
    GenerateError::Config { field: field.into(), message }
}

/// The sampler's seed when the call names none: from the clock (the operator's own default, 0, is
/// the same stream on every call).
fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}

impl InGraphSearch {
    pub fn new(runner: Box<dyn GraphRunner>, op: SearchOp, fixed: Fixed, n_positions: usize, vocab: usize) -> Self {
        InGraphSearch { runner, op, fixed, n_positions, vocab }
    }

    pub fn describe(&self) -> String {
        format!("{} in the graph, on {}", self.op.op_type(), self.runner.describe())
    }

    /// Refuses what the node cannot do: another search, settings it fixed otherwise, settings it
    /// has no input for.
    fn check(&self, c: &GenerationConfig) -> Result<(), GenerateError> {
        let op = self.op.op_type();
        let fits = matches!(
            (self.op, c.mode()),
            (SearchOp::Greedy, Mode::Greedy)
                | (SearchOp::Sampling, Mode::Sample)
                | (SearchOp::Beam, Mode::BeamSearch | Mode::Greedy)
        );
        if !fits {
            let field = if c.do_sample != (self.op == SearchOp::Sampling) { "do_sample" } else { "num_beams" };
            return Err(setting(
                field,
                format!(
                    "this export's graph runs {op} (do_sample {}, num_beams {}, num_beam_groups {} asked); export \
                     again with the --generation that does it, or use a plain export",
                    c.do_sample, c.num_beams, c.num_beam_groups
                ),
            ));
        }
        let fixed = |field: &str, asked: String, fixed: String| -> Result<(), GenerateError> {
            if asked == fixed {
                return Ok(());
            }
            Err(setting(
                field,
                format!("({asked}) differs from the {fixed} this export fixed in its {op} node; export again with it"),
            ))
        };
        fixed("no_repeat_ngram_size", c.no_repeat_ngram_size.to_string(), self.fixed.no_repeat_ngram_size.to_string())?;
        let eos = c.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default();
        if !eos.is_empty() {
            let asked: Vec<i64> = eos.iter().map(|&t| i64::from(t)).collect();
            fixed("eos_token_id", format!("{asked:?}"), format!("{:?}", [self.fixed.eos_token_id]))?;
        }
        if let Some(pad) = c.pad_token_id {
            fixed("pad_token_id", pad.to_string(), self.fixed.pad_token_id.to_string())?;
        }
        match self.op {
            SearchOp::Beam => {
                let asked = matches!(c.early_stopping, EarlyStopping::True);
                if c.early_stopping == EarlyStopping::Never {
                    return Err(setting(
                        "early_stopping",
                        format!("\"never\": {op}'s early_stopping is true or false"),
                    ));
                }
                fixed("early_stopping", asked.to_string(), self.fixed.early_stopping.to_string())?;
            }
            SearchOp::Sampling => {
                fixed("temperature", c.temperature.to_string(), self.fixed.temperature.to_string())?;
                fixed("top_p", c.top_p.to_string(), self.fixed.top_p.to_string())?;
                if c.top_k != 0 {
                    return Err(setting("top_k", format!("({}): {op} has no top-k filter; set top_k 0", c.top_k)));
                }
            }
            SearchOp::Greedy => {}
        }
        let unsupported: [(&str, bool); 15] = [
            ("min_p", c.min_p.is_some()),
            ("typical_p", c.typical_p != 1.0),
            ("epsilon_cutoff", c.epsilon_cutoff != 0.0),
            ("eta_cutoff", c.eta_cutoff != 0.0),
            ("diversity_penalty", c.diversity_penalty != 0.0),
            ("bad_words_ids", c.bad_words_ids.is_some()),
            ("renormalize_logits", c.renormalize_logits),
            ("forced_bos_token_id", c.forced_bos_token_id.is_some()),
            ("forced_eos_token_id", c.forced_eos_token_id.is_some()),
            ("exponential_decay_length_penalty", c.exponential_decay_length_penalty.is_some()),
            ("suppress_tokens", c.suppress_tokens.is_some()),
            ("begin_suppress_tokens", c.begin_suppress_tokens.is_some()),
            ("sequence_bias", c.sequence_bias.is_some()),
            ("stop_strings", c.stop_strings.is_some()),
            ("max_time", c.max_time.is_some()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(setting(field, format!("is set; {op} has no such setting (use a plain export for it)")));
        }
        Ok(())
    }

    /// Runs the node once for `prompts`.
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
    ) -> Result<GenerationOutput, GenerateError> {
        config.validate(self.vocab)?;
        self.check(config)?;
        if prompts.is_empty() {
            return Err(GenerateError::NoPrompts);
        }
        let pad = u32::try_from(self.fixed.pad_token_id).map_err(|_| GenerateError::NoPadToken)?;
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        for (index, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(GenerateError::EmptyPrompt { index });
            }
            if p.len() >= self.n_positions {
                return Err(GenerateError::PromptTooLong { index, len: p.len(), limit: self.n_positions });
            }
            if let Some(&token) = p.iter().find(|&&t| t as usize >= self.vocab) {
                return Err(GenerateError::BadToken { index, token, vocab: self.vocab });
            }
            if let Some(at) = p.iter().position(|&t| t == pad) {
                return Err(setting(
                    "prompt",
                    format!(
                        "prompt {index} holds the pad token {pad} at position {at}: {} treats every pad token as \
                         padding (masked, not counted in positions), where transformers attends to it; drop it or \
                         use a plain export",
                        self.op.op_type()
                    ),
                ));
            }
        }
        // Lengths as transformers resolves them, the total capped at the context.
        let mut notices = Vec::new();
        let wanted = match config.max_new_tokens {
            Some(n) => width.saturating_add(n),
            None => config.max_length,
        };
        let max_length = wanted.min(self.n_positions);
        if max_length < wanted {
            notices.push(format!("the length was capped at the model's context of {} positions", self.n_positions));
        }
        if max_length <= width {
            return Err(GenerateError::NoRoom { prompt_len: width, max_length });
        }
        let min_length = config.min_length.max(config.min_new_tokens.map_or(0, |n| width.saturating_add(n)));
        let rows = prompts.len();
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for p in prompts {
            let padding = width - p.len();
            ids.extend(std::iter::repeat_n(pad as i32, padding));
            ids.extend(p.iter().map(|&t| t as i32));
            mask.extend(std::iter::repeat_n(0, padding));
            mask.extend(std::iter::repeat_n(1, p.len()));
        }
        let as_i32 =
            |field: &str, v: usize| i32::try_from(v).map_err(|_| setting(field, format!("({v}) past 2^31 − 1")));
        let scalar_i = |v: i32| HostTensor::i32(vec![1], vec![v]).ok_or(GenerateError::NoPrompts);
        let scalar_f = |v: f32| HostTensor::f32(vec![1], vec![v]).ok_or(GenerateError::NoPrompts);
        let shape = vec![rows, width];
        let input_ids = HostTensor::i32(shape.clone(), ids).ok_or(GenerateError::NoPrompts)?;
        let attention_mask = HostTensor::i32(shape, mask).ok_or(GenerateError::NoPrompts)?;
        let seed = config.seed.unwrap_or_else(fresh_seed);
        let (beams, returned) = match self.op {
            SearchOp::Beam => (config.num_beams.max(1), config.num_return_sequences),
            _ => (1, config.num_return_sequences),
        };
        if returned > beams || (self.op != SearchOp::Beam && returned != 1) {
            return Err(setting(
                "num_return_sequences",
                format!("({returned}) must be at most num_beams ({beams}); {} returns that many", self.op.op_type()),
            ));
        }
        let mut feeds: Vec<(&str, HostTensor)> = vec![
            ("input_ids", input_ids),
            ("attention_mask", attention_mask),
            ("max_length", scalar_i(as_i32("max_length", max_length)?)?),
            ("min_length", scalar_i(as_i32("min_length", min_length)?)?),
            ("repetition_penalty", scalar_f(config.repetition_penalty)?),
        ];
        match self.op {
            SearchOp::Beam => feeds.extend([
                ("num_beams", scalar_i(as_i32("num_beams", beams)?)?),
                ("num_return_sequences", scalar_i(as_i32("num_return_sequences", returned)?)?),
                ("length_penalty", scalar_f(config.length_penalty)?),
            ]),
            SearchOp::Sampling => feeds.push(("seed", scalar_i((seed % (1 << 31)) as i32)?)),
            SearchOp::Greedy => {}
        }
        let inputs: Vec<(&str, &HostTensor)> = feeds.iter().map(|(n, t)| (*n, t)).collect();
        let outputs = self.runner.run(&inputs)?;
        let get = |name: &str| outputs.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let missing =
            |name: &str| RuntimeError::Input { name: name.into(), message: "the graph did not return it".into() };
        let sequences = get("sequences").ok_or_else(|| missing("sequences"))?;
        let Some(HostData::I32(data)) = Some(&sequences.data) else {
            return Err(RuntimeError::Input { name: "sequences".into(), message: "not int32".into() }.into());
        };
        let length = sequences.shape.last().copied().unwrap_or(0);
        let per_prompt = if self.op == SearchOp::Beam { returned } else { 1 };
        if sequences.shape.first() != Some(&rows) || data.len() != rows * per_prompt * length || length < width {
            return Err(RuntimeError::Input {
                name: "sequences".into(),
                message: format!("shape {:?} for {rows} prompts", sequences.shape),
            }
            .into());
        }
        let scores = get("sequences_scores").and_then(HostTensor::as_f32);
        let eos = u32::try_from(self.fixed.eos_token_id).ok();
        let mut results = Vec::with_capacity(rows * per_prompt);
        let mut padded = Vec::with_capacity(rows * per_prompt);
        for r in 0..rows * per_prompt {
            let row = &data[r * length..(r + 1) * length];
            // New tokens up to the first pad: the operator writes pad where EOS ended a sequence
            // (and leaves what follows undefined once every row has finished).
            let new: Vec<u32> = row[width..].iter().take_while(|&&t| t != pad as i32).map(|&t| t as u32).collect();
            let ended = width + new.len() < max_length;
            let mut tokens = new;
            if let (true, Some(e)) = (ended, eos) {
                tokens.push(e);
            }
            let mut full: Vec<u32> = row[..width].iter().map(|&t| t as u32).collect();
            full.extend_from_slice(&tokens);
            padded.push(full);
            results.push(SequenceResult {
                prompt: r / per_prompt,
                tokens,
                finish_reason: if ended { FinishReason::Eos } else { FinishReason::Length },
                score: scores.and_then(|s| s.get(r).copied()),
                token_logprobs: Vec::new(),
            });
        }
        let longest = padded.iter().map(Vec::len).max().unwrap_or(0);
        for s in &mut padded {
            s.resize(longest, pad);
        }
        Ok(GenerationOutput {
            sequences: padded,
            prompt_len: width,
            results,
            notices,
            seed: (self.op == SearchOp::Sampling).then_some(seed % (1 << 31)),
        })
    }
}

impl ExportedModel {
    /// The search operator the export's graph runs (`gpt2c export --generation`), if any.
    pub fn in_graph_search(&self) -> Option<SearchOp> {
        crate::specialize::gpt2c_metadata_value(&self.model_path(), "gpt2c.generation")
            .and_then(|g| SearchOp::from_name(&g))
    }

    /// Loads an export whose graph generates on `backend` (ONNX Runtime: tract has no search
    /// operators).
    pub fn in_graph(
        &self,
        backend: crate::backend::BackendKind,
        options: &crate::backend::RunnerOptions,
    ) -> Result<InGraphSearch, ModelError> {
        let path = self.model_path();
        let op = self.in_graph_search().ok_or_else(|| ModelError::File {
            path: path.clone(),
            message: "not an export with generation in its graph (gpt2c export --generation)".into(),
        })?;
        if backend == crate::backend::BackendKind::Tract {
            return Err(ModelError::File {
                path,
                message: format!(
                    "its graph runs ONNX Runtime's {} operator, which tract does not have; use --backend ort",
                    op.op_type()
                ),
            });
        }
        let fixed = crate::specialize::gpt2c_metadata_value(&path, "gpt2c.search")
            .and_then(|text| serde_json::from_str::<Fixed>(&text).ok())
            .ok_or_else(|| ModelError::File {
                path: path.clone(),
                message: "no readable gpt2c.search metadata".into(),
            })?;
        // The graph runs as exported: the search node reads every position it needs itself.
        let options = crate::backend::RunnerOptions { logits: crate::backend::LogitsScope::All, ..options.clone() };
        let runner = crate::backend::load_runner(backend, &path, &options)?;
        Ok(InGraphSearch::new(runner, op, fixed, self.config.n_positions, self.config.vocab_size))
    }
}
