//! Text in, text out: an export folder, a backend and a tokenizer behind one
//! call, for the CLI and for Rust programs.
//!
//! ```no_run
//! use gpt2c_runtime::text::{BackendChoice, TextGenerator};
//! let mut g = TextGenerator::open("out/gpt2".as_ref(), BackendChoice::Auto, &Default::default())?;
//! let overrides = serde_json::Map::from_iter([("max_new_tokens".to_string(), serde_json::json!(20))]);
//! let out = g.generate(&["Hello, my name is"], &overrides, &mut |_, piece| print!("{piece}"))?;
//! println!("\n{}", out.texts[0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use serde_json::{Map, Value};

use crate::backend::{BackendKind, RunnerOptions};
use crate::generate::{
    GenerateError, GenerationConfig, GenerationOutput, Mode, ModelLimits, generate, generate_assisted,
};
use crate::model::{ExportedModel, ModelError};
use crate::session::DecoderSession;
use crate::tokenizer::{TextStream, TextTokenizer};

/// Which backend to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// ONNX Runtime when its library is found, else tract.
    Auto,
    Ort,
    Tract,
}

/// Errors of the text API.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

impl TextError {
    /// The request field the error is about (a generation setting, `prompt`), when there is one.
    pub fn param(&self) -> Option<&str> {
        match self {
            TextError::Generate(e) => e.param(),
            TextError::Model(ModelError::Runtime(crate::backend::RuntimeError::Setting { field, .. })) => Some(field),
            TextError::Tokenizer(_) => Some("prompt"),
            TextError::Model(_) => None,
        }
    }
}

/// What generates: a decoding session under gpt2c's driver, or a graph that searches itself.
enum Runs {
    Decoder(Box<dyn DecoderSession>),
    InGraph(Box<crate::search::InGraphSearch>),
}

/// A loaded model ready to generate text.
pub struct TextGenerator {
    pub model: ExportedModel,
    pub tokenizer: TextTokenizer,
    runs: Runs,
    pub backend: BackendKind,
    /// What runs the graph, for people.
    pub description: String,
    /// Things to tell the user about loading (fallbacks, skipped providers).
    pub notices: Vec<String>,
}

/// Generated text for every returned sequence, plus the token-level output.
pub struct TextOutput {
    /// Prompt + continuation, one per returned sequence.
    pub texts: Vec<String>,
    /// The continuation alone.
    pub continuations: Vec<String>,
    pub output: GenerationOutput,
}

impl TextGenerator {
    /// Opens an export folder on a backend (the tokenizer is required).
    pub fn open(dir: &Path, choice: BackendChoice, options: &RunnerOptions) -> Result<TextGenerator, TextError> {
        let model = ExportedModel::open(dir)?;
        let tokenizer = model.tokenizer()?;
        Self::from_parts(model, tokenizer, choice, options)
    }

    /// Loads the session for an already opened folder and tokenizer.
    pub fn from_parts(
        model: ExportedModel,
        tokenizer: TextTokenizer,
        choice: BackendChoice,
        options: &RunnerOptions,
    ) -> Result<TextGenerator, TextError> {
        let mut notices = Vec::new();
        let backend = match choice {
            BackendChoice::Ort => BackendKind::Ort,
            BackendChoice::Tract => BackendKind::Tract,
            BackendChoice::Auto => auto_backend(&mut notices),
        };
        if model.in_graph_search().is_some() {
            let search = model.in_graph(backend, options)?;
            let description = search.describe();
            return Ok(TextGenerator {
                model,
                tokenizer,
                runs: Runs::InGraph(Box::new(search)),
                backend,
                description,
                notices,
            });
        }
        let loaded = model.session_with_report(backend, options)?;
        notices.extend(loaded.warnings);
        Ok(TextGenerator {
            model,
            tokenizer,
            runs: Runs::Decoder(loaded.session),
            backend,
            description: loaded.description,
            notices,
        })
    }

    /// The generation settings: generation_config.json with `overrides` on top.
    pub fn config(&self, overrides: &Map<String, Value>) -> Result<GenerationConfig, TextError> {
        Ok(GenerationConfig::from_json(&self.model.generation_json, overrides)?)
    }

    /// The decoding session (for scoring, benchmarks); an export whose graph generates has none.
    pub fn session_mut(&mut self) -> Result<&mut dyn DecoderSession, TextError> {
        match &mut self.runs {
            Runs::Decoder(session) => Ok(session.as_mut()),
            Runs::InGraph(search) => Err(TextError::Model(ModelError::File {
                path: self.model.model_path(),
                message: format!(
                    "its graph runs {} and returns whole sequences, not logits; use a plain export",
                    search.op.op_type()
                ),
            })),
        }
    }

    pub fn limits(&self) -> ModelLimits {
        self.model.config.limits()
    }

    /// Encodes prompts, generates, decodes. `on_text(sequence, piece)` receives
    /// UTF-8-complete text as tokens are chosen (greedy and sampling).
    pub fn generate(
        &mut self,
        prompts: &[&str],
        overrides: &Map<String, Value>,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<TextOutput, TextError> {
        let config = self.config(overrides)?;
        let ids = prompts
            .iter()
            .map(|p| self.tokenizer.encode(p).map_err(TextError::Tokenizer))
            .collect::<Result<Vec<_>, _>>()?;
        self.generate_ids(&ids, &config, on_text)
    }

    /// As [`generate`](Self::generate), from token ids and a ready configuration.
    pub fn generate_ids(
        &mut self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<TextOutput, TextError> {
        self.generate_ids_with(prompts, config, None, on_text)
    }

    /// As [`generate_ids`](Self::generate_ids), with `assistant` drafting when given
    /// ([`generate_assisted`](crate::generate::generate_assisted)).
    pub fn generate_ids_with(
        &mut self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        assistant: Option<crate::generate::Assistant<'_>>,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<TextOutput, TextError> {
        let limits = self.limits();
        let streams_tokens = matches!(config.mode(), Mode::Greedy | Mode::Sample);
        let rows = prompts.len() * if streams_tokens { config.num_return_sequences } else { 1 };
        let mut streams: Vec<TextStream<'_>> = (0..rows).map(|_| self.tokenizer.stream()).collect();
        let tokenizer = Some(&self.tokenizer);
        let output = match (&mut self.runs, assistant) {
            (Runs::Decoder(session), assistant) => {
                let mut on_token = |row: usize, token: u32| {
                    if let Some(piece) = streams.get_mut(row).and_then(|s| s.push(token)) {
                        on_text(row, &piece);
                    }
                };
                match assistant {
                    Some(a) => {
                        generate_assisted(session.as_mut(), a, limits, prompts, config, tokenizer, &mut on_token)?
                    }
                    None => generate(session.as_mut(), limits, prompts, config, tokenizer, &mut on_token)?,
                }
            }
            (Runs::InGraph(search), Some(_)) => {
                return Err(TextError::Model(ModelError::File {
                    path: self.model.model_path(),
                    message: format!(
                        "its graph runs {} itself: an assistant model cannot draft for it",
                        search.op.op_type()
                    ),
                }));
            }
            // The whole search runs in one call: its text comes at the end.
            (Runs::InGraph(search), None) => {
                let output = search.generate(prompts, config)?;
                if streams_tokens {
                    for (row, r) in output.results.iter().enumerate() {
                        for &token in &r.tokens {
                            if let Some(piece) = streams.get_mut(row).and_then(|s| s.push(token)) {
                                on_text(row, &piece);
                            }
                        }
                    }
                }
                output
            }
        };
        for (row, s) in streams.iter_mut().enumerate() {
            if let Some(piece) = s.finish() {
                on_text(row, &piece);
            }
        }
        let mut texts = Vec::with_capacity(output.results.len());
        let mut continuations = Vec::with_capacity(output.results.len());
        for r in &output.results {
            let prompt = prompts.get(r.prompt).map(Vec::as_slice).unwrap_or_default();
            let mut all = prompt.to_vec();
            all.extend_from_slice(&r.tokens);
            texts.push(self.tokenizer.decode(&all).map_err(TextError::Tokenizer)?);
            continuations.push(self.tokenizer.decode(&r.tokens).map_err(TextError::Tokenizer)?);
        }
        Ok(TextOutput { texts, continuations, output })
    }
}

/// ONNX Runtime if its library loads, else tract (saying why).
fn auto_backend(notices: &mut Vec<String>) -> BackendKind {
    #[cfg(feature = "ort")]
    {
        match crate::backend::ort::library_path() {
            Ok(_) => return BackendKind::Ort,
            Err(e) => notices.push(format!("using tract: {e}")),
        }
    }
    #[cfg(not(feature = "ort"))]
    notices.push("using tract: this build has no ONNX Runtime backend".into());
    BackendKind::Tract
}
