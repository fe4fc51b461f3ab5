//! An export folder as the runtime sees it: `model.onnx`, the few
//! `config.json` values generation needs, `generation_config.json` (the
//! defaults a caller overrides) and the tokenizer.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::backend::GraphRunner;
use crate::backend::{BackendKind, RunnerOptions, RuntimeError, load_runner};
use crate::session::{CachedSession, DecoderSession, KvSession};
use crate::tokenizer::TextTokenizer;

/// Errors reading an export folder.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}: not an export folder (no model.onnx); make one with `gpt2c export`")]
    NoModel(PathBuf),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(
        "{0}: no tokenizer (tokenizer.json) in the export folder; copy the checkpoint's tokenizer files there or re-export"
    )]
    NoTokenizer(PathBuf),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What the runtime needs from config.json (transformers' GPT2Config defaults).
#[derive(Clone, Debug, Deserialize)]
pub struct ModelConfig {
    #[serde(default = "d_vocab", alias = "vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d_positions", alias = "max_position_embeddings")]
    pub n_positions: usize,
    #[serde(default = "d_embd", alias = "hidden_size")]
    pub n_embd: usize,
    #[serde(default = "d_layer", alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(default = "d_head", alias = "num_attention_heads")]
    pub n_head: usize,
    /// A decoder that cross-attends to encoder states: its graph takes them, which generation
    /// here does not provide.
    #[serde(default)]
    pub add_cross_attention: bool,
}

fn d_vocab() -> usize {
    50257
}
fn d_positions() -> usize {
    1024
}
fn d_embd() -> usize {
    768
}
fn d_layer() -> usize {
    12
}
fn d_head() -> usize {
    12
}

/// The largest size config.json may give (as the compiler's loader allows).
const MAX_CONFIG_SIZE: usize = 1 << 40;

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// The sizes of the model's cache and logits.
    pub fn cache_shape(&self) -> crate::backend::engine::CacheShape {
        crate::backend::engine::CacheShape {
            n_layer: self.n_layer,
            n_head: self.n_head,
            head_dim: self.head_dim(),
            vocab: self.vocab_size,
        }
    }

    /// What generation is held to for this model: its vocabulary and context, and the bytes of
    /// cache each row and position costs (every layer's key and value, counted as f32, in each of
    /// the engine's buffer sets: an upper bound for fp16 caches).
    pub fn limits(&self) -> crate::generate::ModelLimits {
        let u = |x: usize| u64::try_from(x).unwrap_or(u64::MAX);
        let per_position = [u(self.n_layer), 2, u(self.n_embd), 4, crate::generate::limits::CACHE_BUFFER_SETS]
            .into_iter()
            .fold(1u64, u64::saturating_mul);
        crate::generate::ModelLimits {
            vocab_size: self.vocab_size,
            n_positions: self.n_positions,
            cache_bytes_per_position: per_position,
            n_head: self.n_head,
        }
    }
}

/// A loaded session with what runs it and any loading warnings.
pub struct LoadedSession {
    pub session: Box<dyn DecoderSession>,
    /// What runs the graph, for people.
    pub description: String,
    pub warnings: Vec<String>,
}

/// What loading an engine said: what runs the graph, and warnings (skipped providers, fallbacks).
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub description: String,
    pub warnings: Vec<String>,
}

/// An export folder, opened.
pub struct ExportedModel {
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// config.json as written (token ids live here too).
    pub config_json: Map<String, Value>,
    /// generation_config.json, or an empty object when absent.
    pub generation_json: Map<String, Value>,
}

fn read_json(path: &Path) -> Result<Map<String, Value>, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::File { path: path.into(), message: format!("cannot read: {e}") })?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ModelError::File { path: path.into(), message: "expected a JSON object".into() }),
        Err(e) => Err(ModelError::File { path: path.into(), message: format!("not valid JSON: {e}") }),
    }
}

impl ExportedModel {
    pub fn open(dir: &Path) -> Result<ExportedModel, ModelError> {
        if !dir.join("model.onnx").is_file() {
            return Err(ModelError::NoModel(dir.into()));
        }
        let config_path = dir.join("config.json");
        let config_json = read_json(&config_path)?;
        let config: ModelConfig = serde_json::from_value(Value::Object(config_json.clone()))
            .map_err(|e| ModelError::File { path: config_path.clone(), message: e.to_string() })?;
        let sizes = [
            ("vocab_size", config.vocab_size),
            ("n_positions", config.n_positions),
            ("n_embd", config.n_embd),
            ("n_layer", config.n_layer),
            ("n_head", config.n_head),
        ];
        if let Some((field, value)) = sizes.iter().find(|(_, v)| *v == 0 || *v > MAX_CONFIG_SIZE) {
            return Err(ModelError::File {
                path: config_path,
                message: format!("`{field}` ({value}) must be between 1 and 2^40"),
            });
        }
        if !config.n_embd.is_multiple_of(config.n_head) {
            return Err(ModelError::File {
                path: config_path,
                message: format!(
                    "n_embd ({}) must be a multiple of n_head ({}) and n_layer ({}) positive",
                    config.n_embd, config.n_head, config.n_layer
                ),
            });
        }
        let gen_path = dir.join("generation_config.json");
        let generation_json = if gen_path.is_file() { read_json(&gen_path)? } else { Map::new() };
        Ok(ExportedModel { dir: dir.into(), config, config_json, generation_json })
    }

    pub fn model_path(&self) -> PathBuf {
        self.dir.join("model.onnx")
    }

    /// Loads the tokenizer (`tokenizer.json`).
    pub fn tokenizer(&self) -> Result<TextTokenizer, ModelError> {
        let path = self.dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::NoTokenizer(self.dir.clone()));
        }
        TextTokenizer::from_file(&path).map_err(|message| ModelError::File { path, message })
    }

    /// A decoding session (graph + KV cache) on the chosen backend. `options.logits` decides
    /// whether every position's logits are computed (scoring) or only the last (generation).
    pub fn session(
        &self,
        backend: BackendKind,
        options: &RunnerOptions,
    ) -> Result<Box<dyn DecoderSession>, ModelError> {
        Ok(self.session_with_report(backend, options)?.session)
    }

    /// Refuses exports generation cannot run: another task, or a decoder that cross-attends.
    pub fn check_generates(&self) -> Result<(), ModelError> {
        let path = self.model_path();
        if let Some(task) = crate::specialize::gpt2c_task(&path).filter(|t| t != "text-generation-with-past") {
            return Err(ModelError::File {
                path,
                message: format!(
                    "exported for the {task} task; generation and scoring need a language model with its cache: \
                     re-export with `gpt2c export --task text-generation-with-past`"
                ),
            });
        }
        if self.config.add_cross_attention {
            return Err(ModelError::File {
                path: self.dir.join("config.json"),
                message: "add_cross_attention: the model cross-attends to an encoder's states (encoder_hidden_states \
                          is a graph input), which gpt2c generate does not compute; run it where the encoder runs"
                    .into(),
            });
        }
        Ok(())
    }

    /// Bytes of cache one row holds per position: every layer's key and value in the graph's
    /// cache type (fp16 caches count 2 bytes, others 4).
    pub fn cache_bytes_per_position(&self) -> u64 {
        let elem = if crate::specialize::gpt2c_dtype(&self.model_path()).as_deref() == Some("fp16") { 2 } else { 4 };
        [self.config.n_layer as u64, 2, self.config.n_embd as u64, elem].into_iter().fold(1u64, u64::saturating_mul)
    }

    /// A continuous-batching scheduler over this export on `backend` (see [`crate::batch`]),
    /// its engine built on the scheduler's thread; returns it with what runs the graph and any
    /// loading warnings. Generation computes last-position logits only, whatever `options` says.
    pub fn batcher(
        &self,
        backend: BackendKind,
        options: &RunnerOptions,
        batch: crate::batch::BatchOptions,
    ) -> Result<(crate::batch::Batcher, LoadReport), ModelError> {
        self.check_generates()?;
        options.validate()?;
        let path = self.model_path();
        let shape = self.config.cache_shape();
        let options = RunnerOptions { logits: crate::backend::LogitsScope::Last, ..options.clone() };
        let (batcher, report) = match backend {
            #[cfg(feature = "ort")]
            BackendKind::Ort => crate::batch::Batcher::start(
                move || {
                    let runner = crate::backend::ort::OrtRunner::load(&path, &options)?;
                    let report = LoadReport { description: runner.describe(), warnings: runner.warnings() };
                    Ok((crate::backend::ort::OrtEngine::new(runner, &shape), report))
                },
                shape,
                batch,
            )?,
            #[cfg(feature = "tract")]
            BackendKind::Tract => crate::batch::Batcher::start(
                move || {
                    let runner = crate::backend::tract::TractRunner::load(&path, &options)?;
                    let report = LoadReport { description: runner.describe(), warnings: runner.warnings() };
                    Ok((crate::backend::tract::TractEngine::new(runner, shape.n_layer)?, report))
                },
                shape,
                batch,
            )?,
            #[allow(unreachable_patterns)]
            other => crate::batch::Batcher::start(
                move || {
                    let runner = load_runner(other, &path, &options)?;
                    let report = LoadReport { description: runner.describe(), warnings: runner.warnings() };
                    Ok((crate::session::HostEngine::new(runner, &shape), report))
                },
                shape,
                batch,
            )?,
        };
        Ok((batcher, report))
    }

    /// A session plus what runs it and any loading warnings.
    pub fn session_with_report(
        &self,
        backend: BackendKind,
        options: &RunnerOptions,
    ) -> Result<LoadedSession, ModelError> {
        self.check_generates()?;
        let path = self.model_path();
        let shape = self.config.cache_shape();
        // Each backend keeps the cache in its own values between steps.
        let (session, description, warnings): (Box<dyn DecoderSession>, String, Vec<String>) = match backend {
            #[cfg(feature = "ort")]
            BackendKind::Ort => {
                let runner = crate::backend::ort::OrtRunner::load(&path, options)?;
                let (d, w) = (runner.describe(), runner.warnings());
                let engine = crate::backend::ort::OrtEngine::new(runner, &shape);
                (Box::new(CachedSession::new(engine, &shape)), d, w)
            }
            #[cfg(feature = "tract")]
            BackendKind::Tract => {
                let runner = crate::backend::tract::TractRunner::load(&path, options)?;
                let (d, w) = (runner.describe(), runner.warnings());
                let engine = crate::backend::tract::TractEngine::new(runner, shape.n_layer)?;
                (Box::new(CachedSession::new(engine, &shape)), d, w)
            }
            #[allow(unreachable_patterns)]
            other => {
                let runner = load_runner(other, &path, options)?;
                let (d, w) = (runner.describe(), runner.warnings());
                (Box::new(KvSession::over(runner, &shape)), d, w)
            }
        };
        Ok(LoadedSession { session, description, warnings })
    }
}
