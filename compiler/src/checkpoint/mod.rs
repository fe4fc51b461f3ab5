//! Loading a Hugging Face GPT-2 checkpoint folder: `config.json`, weights and
//! tokenizer files.
//!
//! Weights come from `model.safetensors` or a sharded
//! `model.safetensors.index.json`; both are memory-mapped and never copied.

pub mod config;
pub mod pickle;
pub mod safetensors;
pub mod torch_bin;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Activation, ConfigError, Gpt2Config, Summary, SummaryType};
pub use weights::{InMemoryWeights, SafetensorsWeights, WeightError, WeightSource, Weights};

/// Tokenizer and generation files carried into an export when present.
pub const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// Errors opening a checkpoint folder.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{0}: no such folder")]
    NotFound(PathBuf),
    #[error("{0}: not a folder (expected a Hugging Face model folder with config.json and model.safetensors)")]
    NotADirectory(PathBuf),
    #[error("{0}: missing; a GPT-2 checkpoint folder needs its config.json")]
    MissingConfig(PathBuf),
    #[error("{dir}: no weights found: expected model.safetensors or model.safetensors.index.json{extra}")]
    MissingWeights { dir: PathBuf, extra: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightError),
}

/// An opened checkpoint.
pub struct Checkpoint {
    pub dir: PathBuf,
    /// The config.json read (copied into the export byte for byte).
    pub config_path: PathBuf,
    pub config: Gpt2Config,
    /// config.json as written, for copying into the export.
    pub config_json: serde_json::Map<String, serde_json::Value>,
    pub weights: Weights,
}

impl Checkpoint {
    /// Opens a local checkpoint folder.
    pub fn open(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        if !dir.exists() {
            return Err(CheckpointError::NotFound(dir.into()));
        }
        if !dir.is_dir() {
            return Err(CheckpointError::NotADirectory(dir.into()));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(CheckpointError::MissingConfig(config_path));
        }
        let (config, config_json) = Gpt2Config::load(&config_path)?;
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let source: Arc<dyn WeightSource> = if single.is_file() {
            Arc::new(SafetensorsWeights::single(&single)?)
        } else if index.is_file() {
            Arc::new(SafetensorsWeights::sharded(&index)?)
        } else if dir.join("pytorch_model.bin").is_file() {
            Arc::new(torch_bin::TorchBinWeights::open(&dir.join("pytorch_model.bin"))?)
        } else {
            return Err(CheckpointError::MissingWeights { dir: dir.into(), extra: " or pytorch_model.bin".into() });
        };
        Ok(Checkpoint { dir: dir.into(), config_path, config, config_json, weights: Weights::new(source) })
    }

    /// A checkpoint from a config alone (`config` is a config.json file, or a folder holding one),
    /// with the weights `make` builds for it (random initialisation: `gpt2::random_init`).
    pub fn with_weights(
        config: &Path,
        make: impl FnOnce(&Gpt2Config, &Path) -> Result<Arc<dyn WeightSource>, CheckpointError>,
    ) -> Result<Checkpoint, CheckpointError> {
        let config_path = if config.is_dir() { config.join("config.json") } else { config.to_path_buf() };
        if !config_path.is_file() {
            return Err(CheckpointError::MissingConfig(config_path));
        }
        let (parsed, config_json) = Gpt2Config::load(&config_path)?;
        let weights = make(&parsed, &config_path)?;
        let dir = config_path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Checkpoint { dir, config_path, config: parsed, config_json, weights: Weights::new(weights) })
    }

    /// Builds a checkpoint from a config and in-memory weights (tests).
    pub fn from_parts(config_text: &str, source: Arc<dyn WeightSource>) -> Result<Checkpoint, CheckpointError> {
        let (config, config_json) = Gpt2Config::parse(Path::new("config.json"), config_text)?;
        Ok(Checkpoint {
            dir: PathBuf::new(),
            config_path: PathBuf::from("config.json"),
            config,
            config_json,
            weights: Weights::new(source),
        })
    }
}
