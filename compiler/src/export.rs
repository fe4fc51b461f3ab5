//! `gpt2c export`: checkpoint folder in, self-contained export folder out.
//!
//! The export folder holds `model.onnx` (+ `model.onnx_data` past 2 GiB),
//! `config.json` (copied byte for byte), `generation_config.json` (copied, or
//! derived from config.json as transformers' `GenerationConfig.from_model_config`
//! does) and the tokenizer files. Everything is written into a temporary folder
//! beside the destination and renamed into place at the end, so a failed
//! export leaves nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::checkpoint::{Checkpoint, CheckpointError, TOKENIZER_FILES};
use crate::gpt2::{self, BuildError, GraphOptions};
use crate::onnx::{self, ExternalData, ModelMeta, WriteError};

pub use crate::layout::MODEL_FILE;

/// Options of one export.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    pub graph: GraphOptions,
    pub external_data: ExternalData,
    /// Replace an existing non-empty output folder.
    pub force: bool,
    /// Build from the config alone with transformers' initialisation and this seed (the model
    /// path is then a config.json file or a folder holding one; its weights are not read).
    pub random_init: Option<u64>,
    /// Where files go and which runtime configs are written.
    pub layout: crate::layout::Layout,
    /// Generation inside the graph: the search operator to wrap the decoder in.
    pub generation: Option<gpt2::search::Generation>,
    /// The search operator's settings given to the export (the rest from generation_config.json).
    pub search: gpt2::search::SearchOverrides,
    /// The Triton model's name (`--layout triton`); default the checkpoint folder's name.
    pub triton_name: Option<String>,
    /// Triton's `max_batch_size`; default [`DEFAULT_TRITON_MAX_BATCH_SIZE`].
    pub triton_max_batch_size: Option<u32>,
}

/// Triton's `max_batch_size` when none is given.
pub const DEFAULT_TRITON_MAX_BATCH_SIZE: u32 = 8;

/// What the caller can show while an export runs.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A step began.
    Step(&'static str),
    /// Writing the weights began; this many bytes will be written.
    WriteStart(u64),
    /// This many more bytes were written.
    Wrote(u64),
    /// Writing the weights ended.
    WriteDone,
}

/// A finished export.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    pub out_dir: PathBuf,
    pub parameters: usize,
    pub n_layer: usize,
    pub task: gpt2::Task,
    /// Bytes of every file written.
    pub total_bytes: u64,
    pub files: Vec<String>,
    pub external_data: bool,
    pub seconds: f64,
    /// Things the user should know (e.g. no tokenizer files found).
    pub warnings: Vec<String>,
}

/// Errors of an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{0}: the output path exists and is a file; give a folder path for the export")]
    OutputIsFile(PathBuf),
    #[error("{0}: the output folder exists and is not empty; pass --force to replace it")]
    OutputNotEmpty(PathBuf),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: not valid JSON: {message}")]
    BadJson { path: PathBuf, message: String },
    #[error(
        "--layout {layout} runs a language model with its cache: it needs --task text-generation-with-past, not {task}"
    )]
    LayoutNeedsCache { layout: crate::layout::Layout, task: gpt2::Task },
    #[error(
        "--kv-cache shared keeps a cache of self-attention: it needs a task with past key/values \
         (text-generation-with-past, feature-extraction-with-past), not {0}"
    )]
    SharedCacheNeedsPast(gpt2::Task),
    #[error("--generation {generation}: {message}")]
    Generation { generation: gpt2::search::Generation, message: String },
    #[error(transparent)]
    Search(#[from] gpt2::search::SearchError),
    #[error(
        "--layout triton: {0} keeps a key/value cache between calls, which Triton's stateless requests cannot \
         carry; export the in-graph search (--generation greedy-search|beam-search|sampling) or a task without a \
         cache (text-generation, the default for this layout)"
    )]
    TritonNeedsStateless(gpt2::Task),
    #[error("--triton-model-name `{0}`: use letters, digits, `-`, `_` and `.` (not first), at most 128")]
    TritonName(String),
    #[error("--triton-max-batch-size {0}: must be from 1 to 65536")]
    TritonBatch(u32),
}

impl ExportOptions {
    /// Refuses options that cannot make an export, before anything is read: the graph's choices
    /// (opset, precision) and a layout that cannot hold the task asked for.
    pub fn validate(&self) -> Result<(), ExportError> {
        self.graph.validate()?;
        if let Some(generation) = self.generation {
            let refuse = |message: String| Err(ExportError::Generation { generation, message });
            let p = &self.graph.precision;
            if p.dtype != gpt2::FloatType::Fp32 {
                return refuse(format!(
                    "--dtype {}: the operators' CPU kernels process float32 logits and caches; export fp32 \
                     (quantized weights work)",
                    p.dtype
                ));
            }
            if p.kv_cache != gpt2::KvCache::Concat {
                return refuse("--kv-cache shared: the operators keep the decoder's cache themselves".into());
            }
            if matches!(self.layout, crate::layout::Layout::Genai | crate::layout::Layout::TransformersJs) {
                return refuse(format!(
                    "--layout {}: that runtime runs its own generation loop over the decoder; use --layout optimum \
                     or triton",
                    self.layout
                ));
            }
        }
        if self.layout == crate::layout::Layout::Triton {
            if let Some(name) = self.triton_name.as_deref().filter(|n| !crate::layout::valid_triton_name(n)) {
                return Err(ExportError::TritonName(name.into()));
            }
            if let Some(n) = self.triton_max_batch_size.filter(|n| !(1..=65536).contains(n)) {
                return Err(ExportError::TritonBatch(n));
            }
        }
        if let Some(task) = self.graph.task {
            self.check_layout(task)?;
        }
        Ok(())
    }

    /// The task the graph is built for: with `--generation`, a language model with its cache (the
    /// decoder); for a Triton repository without it, a task without a cache (`text-generation`
    /// when the checkpoint implies one with).
    pub fn effective_task(&self, config: &crate::checkpoint::Gpt2Config) -> Result<gpt2::Task, ExportError> {
        let implied = self.graph.task_for(config)?;
        if self.generation.is_some() {
            return Ok(gpt2::Task::TextGenerationWithPast);
        }
        if self.layout == crate::layout::Layout::Triton && self.graph.task.is_none() && implied.with_past() {
            return Ok(match implied {
                gpt2::Task::FeatureExtractionWithPast => gpt2::Task::FeatureExtraction,
                _ => gpt2::Task::TextGeneration,
            });
        }
        Ok(implied)
    }

    /// The layout holds the task (onnxruntime-genai runs language models with their cache), and a
    /// shared cache has a cache to share.
    fn check_layout(&self, task: gpt2::Task) -> Result<(), ExportError> {
        if let Some(generation) = self.generation
            && !matches!(task, gpt2::Task::TextGeneration | gpt2::Task::TextGenerationWithPast)
        {
            return Err(ExportError::Generation {
                generation,
                message: format!("generates text with a language model, not {task}"),
            });
        }
        if self.generation.is_some() {
            return Ok(());
        }
        if self.layout == crate::layout::Layout::Triton && task.with_past() {
            return Err(ExportError::TritonNeedsStateless(task));
        }
        if self.layout == crate::layout::Layout::Genai && task != gpt2::Task::TextGenerationWithPast {
            return Err(ExportError::LayoutNeedsCache { layout: self.layout, task });
        }
        if self.graph.precision.kv_cache == gpt2::KvCache::Shared && !task.with_past() {
            return Err(ExportError::SharedCacheNeedsPast(task));
        }
        Ok(())
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |e| ExportError::Io { path: path.into(), message: e.to_string() }
}

/// Checks the destination before any work: a file there, or a non-empty
/// folder without `force`, is refused.
pub fn check_output(out_dir: &Path, force: bool) -> Result<(), ExportError> {
    match fs::metadata(out_dir) {
        Ok(m) if !m.is_dir() => Err(ExportError::OutputIsFile(out_dir.into())),
        Ok(_) => {
            let mut entries = fs::read_dir(out_dir).map_err(io_error(out_dir))?;
            if entries.next().is_some() && !force {
                return Err(ExportError::OutputNotEmpty(out_dir.into()));
            }
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// Exports the checkpoint in `model_dir` to `out_dir`.
pub fn export(
    model_dir: &Path,
    out_dir: &Path,
    options: &ExportOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExportSummary, ExportError> {
    let started = Instant::now();
    options.validate()?;
    check_output(out_dir, options.force)?;
    if options.graph.task.is_none() && options.random_init.is_none() && options.layout == crate::layout::Layout::Genai {
        // The task config.json implies decides whether the layout can hold it: read config.json
        // alone first, so a refusal comes before any weight file is opened.
        let config_path = model_dir.join("config.json");
        if config_path.is_file() {
            let (config, _) = crate::checkpoint::Gpt2Config::load(&config_path).map_err(CheckpointError::from)?;
            options.check_layout(options.graph.task_for(&config)?)?;
        }
    }
    progress(Progress::Step("reading checkpoint"));
    let ckpt = match options.random_init {
        Some(seed) => crate::gpt2::random_init::random_checkpoint(model_dir, options.graph.task, seed)?,
        None => Checkpoint::open(model_dir)?,
    };
    // The task config.json implies is known now; the weights have not been read yet.
    if let (Some(task), Some(_)) = (options.graph.task, options.generation) {
        options.check_layout(task)?;
    }
    let task = options.effective_task(&ckpt.config)?;
    options.check_layout(task)?;
    let graph_options = gpt2::GraphOptions { task: Some(task), ..options.graph.clone() };
    let triton_name = match &options.triton_name {
        Some(n) => n.clone(),
        None => triton_default_name(model_dir),
    };
    let search = match options.generation {
        Some(generation) => {
            let generation_config = generation_config_of(&ckpt)?;
            Some(gpt2::search::SearchSettings::resolve(generation, &ckpt.config, &generation_config, &options.search)?)
        }
        None => None,
    };
    progress(Progress::Step("building graph"));
    let graph = match &search {
        Some(settings) => {
            let inputs = if options.layout == crate::layout::Layout::Triton {
                gpt2::search::Inputs::Fixed
            } else {
                gpt2::search::Inputs::Fed
            };
            gpt2::search::build_search(&ckpt, &graph_options, settings, inputs)?
        }
        None => gpt2::build_causal_lm(&ckpt, &graph_options)?,
    };
    let described = match options.generation {
        Some(g) => format!("{} with {} inside the graph", task.describe(), g.kind().op_type()),
        None if options.layout == crate::layout::Layout::Triton => format!(
            "{}, stateless: each request computes every position (Triton keeps no key/value cache between \
             requests; --generation puts the whole search in the graph)",
            task.describe()
        ),
        None => task.describe().to_string(),
    };
    let mut metadata: Vec<(String, String)> = vec![
        ("gpt2c.task".into(), task.name().into()),
        ("gpt2c.dtype".into(), options.graph.precision.dtype.name().into()),
        ("gpt2c.quantize".into(), options.graph.precision.quantize.name().into()),
        ("gpt2c.target".into(), options.graph.precision.target.name().into()),
        ("gpt2c.kv_cache".into(), options.graph.precision.kv_cache.name().into()),
        // The description files written before the keys above carried; kept for readers of those.
        ("gpt2c.precision".into(), options.graph.precision.describe()),
    ];
    if let (Some(g), Some(settings)) = (options.generation, &search) {
        metadata.push(("gpt2c.generation".into(), g.name().into()));
        metadata.push(("gpt2c.search".into(), settings.fixed_json()));
    }
    let meta = ModelMeta { doc_string: format!("{described}, compiled by gpt2c"), metadata };

    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_error(&parent))?;
    let staging = tempfile::Builder::new().prefix(".gpt2c-export-").tempdir_in(&parent).map_err(io_error(&parent))?;

    progress(Progress::WriteStart(graph.initializer_bytes() as u64));
    let model_path = staging.path().join(options.layout.model_path_in(&options.graph.precision, &triton_name));
    if let Some(parent) = model_path.parent() {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let written =
        onnx::write_model(&graph, &meta, &model_path, options.external_data, &mut |n| progress(Progress::Wrote(n)))?;
    progress(Progress::WriteDone);

    progress(Progress::Step("copying config and tokenizer"));
    let mut warnings = Vec::new();
    let side = staging.path().join(options.layout.side_folder(&triton_name));
    copy_side_files(&ckpt, &side, &mut warnings)?;
    if let Some(settings) = &search {
        // The folder's defaults are what the search node runs.
        let path = side.join("generation_config.json");
        let text =
            serde_json::to_string_pretty(&Value::Object(settings.generation_config(generation_config_of(&ckpt)?)))
                .unwrap_or_default();
        fs::write(&path, text + "\n").map_err(io_error(&path))?;
    }
    if options.layout == crate::layout::Layout::Triton {
        let max_batch = options.triton_max_batch_size.unwrap_or(DEFAULT_TRITON_MAX_BATCH_SIZE);
        let config = crate::layout::triton_config(&triton_name, &graph, max_batch, &described);
        let path = side.join("config.pbtxt");
        fs::write(&path, config).map_err(io_error(&path))?;
    }
    if options.layout == crate::layout::Layout::TransformersJs && written.data.is_some() {
        // transformers.js reads external data only when config.json says so.
        let path = staging.path().join("config.json");
        let mut config = ckpt.config_json.clone();
        config.insert("transformers.js_config".into(), serde_json::json!({ "use_external_data_format": true }));
        let text = serde_json::to_string_pretty(&Value::Object(config)).unwrap_or_default() + "\n";
        fs::write(&path, text).map_err(io_error(&path))?;
    }
    if options.layout == crate::layout::Layout::Genai {
        let gen_path = staging.path().join("generation_config.json");
        let generation: Map<String, Value> = serde_json::from_slice(&fs::read(&gen_path).map_err(io_error(&gen_path))?)
            .map_err(|e| ExportError::BadJson { path: gen_path.clone(), message: e.to_string() })?;
        let genai = crate::layout::genai_config(&ckpt.config, &generation, options.graph.precision.kv_cache);
        let path = staging.path().join("genai_config.json");
        fs::write(&path, serde_json::to_string_pretty(&genai).unwrap_or_default() + "\n").map_err(io_error(&path))?;
    }

    let mut files = Vec::new();
    let mut total_bytes = 0;
    // The folder and its `onnx/` subfolder (transformers.js layout).
    let mut folders = vec![(staging.path().to_path_buf(), String::new())];
    while let Some((folder, prefix)) = folders.pop() {
        for entry in fs::read_dir(&folder).map_err(io_error(&folder))? {
            let entry = entry.map_err(io_error(&folder))?;
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let meta = entry.metadata().map_err(io_error(&entry.path()))?;
            if meta.is_dir() {
                folders.push((entry.path(), format!("{name}/")));
            } else {
                total_bytes += meta.len();
                files.push(name);
            }
        }
    }
    files.sort();

    install(staging, out_dir)?;
    Ok(ExportSummary {
        out_dir: out_dir.into(),
        parameters: graph.parameter_count(),
        n_layer: ckpt.config.n_layer,
        task,
        total_bytes,
        files,
        external_data: written.data.is_some(),
        seconds: started.elapsed().as_secs_f64(),
        warnings,
    })
}

/// A Triton model name from the checkpoint folder's name (characters Triton refuses become `_`).
fn triton_default_name(model_dir: &Path) -> String {
    let base = model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let base = base.strip_suffix(".json").unwrap_or(&base);
    let name: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    let name = name.trim_start_matches('.');
    if name.is_empty() { "model".into() } else { name.chars().take(128).collect() }
}

/// The checkpoint's generation_config.json, or the one derived from config.json.
fn generation_config_of(ckpt: &Checkpoint) -> Result<Map<String, Value>, ExportError> {
    let path = ckpt.dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(generation_config_from_model_config(&ckpt.config_json));
    }
    let text = fs::read_to_string(&path).map_err(io_error(&path))?;
    serde_json::from_str(&text).map_err(|e| ExportError::BadJson { path, message: e.to_string() })
}

/// Moves the finished staging folder to `out_dir`, replacing what is there.
fn install(staging: tempfile::TempDir, out_dir: &Path) -> Result<(), ExportError> {
    let staged = staging.keep();
    let result = (|| {
        if out_dir.exists() {
            // Move the old folder aside first, so the destination is never half-replaced.
            let parent = staged.parent().unwrap_or(Path::new("."));
            let old = tempfile::Builder::new().prefix(".gpt2c-old-").tempdir_in(parent).map_err(io_error(parent))?;
            let old_path = old.path().join("previous");
            fs::rename(out_dir, &old_path).map_err(io_error(out_dir))?;
            fs::rename(&staged, out_dir).map_err(io_error(out_dir))?;
            drop(old);
        } else {
            fs::rename(&staged, out_dir).map_err(io_error(out_dir))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staged);
    }
    result
}

fn copy_side_files(ckpt: &Checkpoint, dest: &Path, warnings: &mut Vec<String>) -> Result<(), ExportError> {
    let dir = &ckpt.dir;
    let config_src = &ckpt.config_path;
    copy_file(config_src, &dest.join("config.json"))?;

    let gen_src = dir.join("generation_config.json");
    if gen_src.is_file() {
        let text = fs::read_to_string(&gen_src).map_err(io_error(&gen_src))?;
        serde_json::from_str::<Map<String, Value>>(&text)
            .map_err(|e| ExportError::BadJson { path: gen_src.clone(), message: e.to_string() })?;
        fs::write(dest.join("generation_config.json"), text).map_err(io_error(dest))?;
    } else {
        let derived = generation_config_from_model_config(&ckpt.config_json);
        let text = serde_json::to_string_pretty(&Value::Object(derived)).unwrap_or_default() + "\n";
        fs::write(dest.join("generation_config.json"), text).map_err(io_error(dest))?;
    }

    let mut found = false;
    for name in TOKENIZER_FILES {
        let src = dir.join(name);
        if !src.is_file() {
            continue;
        }
        if name.ends_with(".json") {
            let text = fs::read(&src).map_err(io_error(&src))?;
            serde_json::from_slice::<Value>(&text)
                .map_err(|e| ExportError::BadJson { path: src.clone(), message: e.to_string() })?;
        }
        copy_file(&src, &dest.join(name))?;
        found = true;
    }
    if !found {
        warnings.push(format!(
            "{}: no tokenizer files (tokenizer.json, vocab.json + merges.txt); the export cannot encode text until one is added",
            dir.display()
        ));
    }
    Ok(())
}

/// Copies contents only: the export's files get ordinary permissions even
/// when the checkpoint's are read-only (a cache, a shared folder).
fn copy_file(src: &Path, dest: &Path) -> Result<(), ExportError> {
    let bytes = fs::read(src).map_err(io_error(src))?;
    fs::write(dest, bytes).map_err(io_error(dest))
}

/// Generation parameters transformers reads from a model config, with the
/// defaults `GenerationConfig` leaves out when it saves.
const GENERATION_DEFAULTS: [(&str, Option<f64>); 22] = [
    ("max_length", Some(20.0)),
    ("min_length", Some(0.0)),
    ("do_sample", None),
    ("early_stopping", None),
    ("num_beams", Some(1.0)),
    ("num_beam_groups", Some(1.0)),
    ("diversity_penalty", Some(0.0)),
    ("temperature", Some(1.0)),
    ("top_k", Some(50.0)),
    ("top_p", Some(1.0)),
    ("typical_p", Some(1.0)),
    ("repetition_penalty", Some(1.0)),
    ("length_penalty", Some(1.0)),
    ("no_repeat_ngram_size", Some(0.0)),
    ("num_return_sequences", Some(1.0)),
    ("bad_words_ids", None),
    ("forced_bos_token_id", None),
    ("forced_eos_token_id", None),
    ("bos_token_id", None),
    ("eos_token_id", None),
    ("pad_token_id", None),
    ("decoder_start_token_id", None),
];

/// `GenerationConfig.from_model_config`: the generation fields of config.json
/// that are set and differ from the defaults, marked `_from_model_config`.
pub fn generation_config_from_model_config(config: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("_from_model_config".into(), Value::Bool(true));
    for (key, default) in GENERATION_DEFAULTS {
        match config.get(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Number(n)) if default.is_some() && n.as_f64() == default => {}
            Some(v) => {
                out.insert(key.into(), v.clone());
            }
        }
    }
    // transformers' GPT2Config defaults apply when config.json leaves the ids out.
    for key in ["bos_token_id", "eos_token_id"] {
        if !config.contains_key(key) {
            out.insert(key.into(), Value::from(50256));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_keeps_only_set_non_default_fields() {
        let config: Map<String, Value> = serde_json::from_str(
            r#"{"n_embd": 8, "eos_token_id": 7, "pad_token_id": null, "num_beams": 1, "max_length": 50, "do_sample": true}"#,
        )
        .unwrap();
        let g = generation_config_from_model_config(&config);
        let expected: Map<String, Value> = serde_json::from_str(
            r#"{"_from_model_config": true, "max_length": 50, "do_sample": true, "eos_token_id": 7, "bos_token_id": 50256}"#,
        )
        .unwrap();
        assert_eq!(g, expected);
    }
}
