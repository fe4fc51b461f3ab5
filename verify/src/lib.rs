//! `gpt2c verify`: checks an export folder without trusting the code that wrote it.
//!
//! ```text
//! structure (protobuf, versions, names, order, initializers, external data, operators)
//!   ─► contract (inputs and outputs for the task, from a specification of our own)
//!   ─► infer (element types and shapes through every node)
//!   ─► reference (an eager GPT-2 forward straight from the checkpoint's weights)
//!        compared with the export on each backend, for a prompt, a padded batch, a decode step
//! ```
//!
//! [`verify`] returns a [`Report`]; its JSON form is the stable schema `gpt2c.verify/1`
//! documented in the README.

pub mod contract;
pub mod infer;
pub mod numeric;
pub mod reference;
pub mod search;
pub mod structure;

use std::path::{Path, PathBuf};
use std::time::Instant;

use gpt2c_proto as pb;
use gpt2c_runtime::{BackendKind, RunnerOptions};
use serde::Serialize;

use gpt2c_compiler::checkpoint::{Checkpoint, Gpt2Config};
use gpt2c_compiler::gpt2::Task;
use numeric::{Case, OutputError, Rng, Tolerance};
use structure::{Check, Finding};

/// The graph's file in an export folder.
const MODEL_FILE: &str = "model.onnx";

/// The JSON report's schema name; bumped on any incompatible change.
pub const SCHEMA: &str = "gpt2c.verify/1";

/// What to verify and how.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// A Hugging Face checkpoint folder to compare outputs with (none: structure only).
    pub reference: Option<PathBuf>,
    /// Backends that run the export against the reference.
    pub backends: Vec<BackendKind>,
    /// Allowed error; `None` takes the default for the export's precision.
    pub tolerance: Option<Tolerance>,
    /// Seed of the random prompts.
    pub seed: u64,
    /// Intra-op threads for the backends.
    pub threads: Option<usize>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            reference: None,
            backends: vec![BackendKind::Ort, BackendKind::Tract],
            tolerance: None,
            seed: 0,
            threads: None,
        }
    }
}

/// Problems that stop verification before it can judge the export (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}: no such file or folder")]
    NotFound(PathBuf),
    #[error("{dir}: no model found (expected model.onnx, or one onnx/model*.onnx){found}")]
    NoModel { dir: PathBuf, found: String },
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {size} bytes: over protobuf's 2 GiB limit for one ONNX file")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("reference checkpoint: {0}")]
    Reference(String),
    #[error("reference checkpoint {path}")]
    ReferenceCheckpoint {
        path: PathBuf,
        #[source]
        source: Box<gpt2c_compiler::checkpoint::CheckpointError>,
    },
    #[error("the reference forward")]
    ReferenceModel(#[source] Box<reference::ReferenceError>),
    #[error("the reference forward of the {case} case")]
    ReferenceRun {
        case: &'static str,
        #[source]
        source: Box<reference::ReferenceError>,
    },
}

/// A structural check's outcome (serialized lowercase: `pass`, `fail`, `skipped`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

/// One structural check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub check: Check,
    /// Skipped ones say why in `findings`.
    pub status: Status,
    pub findings: Vec<String>,
}

/// One case on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct NumericResult {
    pub backend: &'static str,
    pub case: &'static str,
    pub passed: bool,
    /// Why the case could not run (the backend refused the model or the inputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub outputs: Vec<OutputError>,
}

/// Everything verify found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub model: String,
    pub reference: Option<String>,
    pub task: Option<String>,
    pub precision: Option<String>,
    pub passed: bool,
    pub checks: Vec<CheckResult>,
    pub tolerance: Option<Tolerance>,
    pub numeric: Vec<NumericResult>,
    /// Seconds per phase: `structure` (every check above), `reference` (the eager forward), and
    /// each backend's name (loading the export and running every case).
    pub timings_s: std::collections::BTreeMap<String, f64>,
    pub elapsed_s: f64,
}

/// The model file of `path` (a file, or an export folder) and the export folder holding config.json.
pub fn locate_model(path: &Path) -> Result<(PathBuf, PathBuf), VerifyError> {
    if !path.exists() {
        return Err(VerifyError::NotFound(path.into()));
    }
    if path.is_file() {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        // transformers.js keeps the model in onnx/ and config.json one level up; a Triton repository
        // in <name>/<version>/ with config.json in <name>/.
        let nested = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "onnx" || n.bytes().all(|b| b.is_ascii_digit()));
        let export = if nested && !dir.join("config.json").is_file() {
            dir.parent().map(Path::to_path_buf).unwrap_or(dir)
        } else {
            dir
        };
        return Ok((path.into(), export));
    }
    let top = path.join(MODEL_FILE);
    if top.is_file() {
        return Ok((top, path.into()));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path.join("onnx"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    // A Triton repository: <name>/<version>/model.onnx, config.json beside <name>/config.pbtxt.
    let triton: Vec<PathBuf> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("config.pbtxt").is_file())
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|v| v.path().join(MODEL_FILE))
        .filter(|m| m.is_file())
        .collect();
    if found.is_empty() && triton.len() == 1 {
        let model = triton[0].clone();
        let export = model.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| path.into());
        return Ok((model, export));
    }
    found.extend(triton);
    found.sort();
    match found.len() {
        1 => Ok((found.remove(0), path.into())),
        0 => Err(VerifyError::NoModel { dir: path.into(), found: String::new() }),
        _ => {
            let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            Err(VerifyError::NoModel {
                dir: path.into(),
                found: format!("; several found, name one: {}", names.join(", ")),
            })
        }
    }
}

fn metadata<'a>(model: &'a pb::ModelProto, key: &str) -> Option<&'a str> {
    model.metadata_props.iter().find(|e| e.key() == key).map(|e| e.value())
}

/// The export's float type and quantization: gpt2c's `gpt2c.dtype` and `gpt2c.quantize`, or for
/// files written before those keys, what `gpt2c.precision` describes (`fp32` when none is there).
fn formats(model: &pb::ModelProto) -> (String, String) {
    let described = metadata(model, "gpt2c.precision").unwrap_or("fp32");
    let dtype = metadata(model, "gpt2c.dtype").unwrap_or(if described.starts_with("fp16") { "fp16" } else { "fp32" });
    let quantize = metadata(model, "gpt2c.quantize")
        .unwrap_or_else(|| gpt2c_runtime::specialize::quantize_from_description(described));
    (dtype.to_string(), quantize.to_string())
}

/// The export's task: gpt2c's metadata, else what the inputs and config.json's architectures say.
fn task_of(model: &pb::ModelProto, config: &Gpt2Config) -> Result<Task, String> {
    if let Some(name) = metadata(model, "gpt2c.task") {
        return name.parse::<Task>().map_err(|_| format!("metadata gpt2c.task = \"{name}\" names no task gpt2c knows"));
    }
    let inputs: Vec<&str> = model.graph.iter().flat_map(|g| g.input.iter().map(|v| v.name())).collect();
    let task = Task::from_architectures(&config.architectures)?;
    let with_past = inputs.iter().any(|n| n.starts_with("past_key_values."));
    Ok(match (task, with_past) {
        (Task::TextGenerationWithPast, false) => Task::TextGeneration,
        (Task::FeatureExtraction, true) => Task::FeatureExtractionWithPast,
        (t, _) => t,
    })
}

/// The float type the graph's inputs and outputs use (the first float output's).
fn float_type(graph: &pb::GraphProto) -> pb::DataType {
    graph
        .output
        .iter()
        .filter_map(contract::declared)
        .filter_map(|(elem, _)| pb::data_type(elem).ok())
        .find(|d| matches!(d, pb::DataType::Float | pb::DataType::Float16))
        .unwrap_or(pb::DataType::Float)
}

struct Checks(Vec<CheckResult>);

impl Checks {
    fn record(&mut self, check: Check, findings: Vec<Finding>) {
        let findings: Vec<String> = findings.into_iter().map(|f| f.message).collect();
        self.0.push(CheckResult {
            check,
            status: if findings.is_empty() { Status::Pass } else { Status::Fail },
            findings,
        });
    }
    fn skip(&mut self, check: Check, why: String) {
        self.0.push(CheckResult { check, status: Status::Skipped, findings: vec![why] });
    }
    fn failed(&self, check: Check) -> bool {
        self.0.iter().any(|c| c.check == check && c.status == Status::Fail)
    }
}

/// Verifies the export at `path` (an export folder or a model file).
pub fn verify(path: &Path, options: &VerifyOptions) -> Result<Report, VerifyError> {
    let started = Instant::now();
    let (model_path, export_dir) = locate_model(path)?;
    let size =
        std::fs::metadata(&model_path).map_err(|source| VerifyError::Read { path: model_path.clone(), source })?.len();
    if size > structure::MAX_MODEL_BYTES {
        return Err(VerifyError::TooLarge { path: model_path, size });
    }
    let bytes = std::fs::read(&model_path).map_err(|source| VerifyError::Read { path: model_path.clone(), source })?;
    let mut checks = Checks(Vec::new());
    let (model, findings) = structure::check_model_bytes(&bytes);
    drop(bytes);
    // Structural findings come back mixed; each check gets its own.
    for check in
        [Check::Protobuf, Check::Versions, Check::Names, Check::Topology, Check::Initializers, Check::Operators]
    {
        checks.record(check, findings.iter().filter(|f| f.check == check).cloned().collect());
    }
    let mut report = Report {
        schema: SCHEMA,
        model: model_path.display().to_string(),
        reference: options.reference.as_ref().map(|p| p.display().to_string()),
        task: None,
        precision: None,
        passed: false,
        checks: Vec::new(),
        tolerance: None,
        numeric: Vec::new(),
        timings_s: Default::default(),
        elapsed_s: 0.0,
    };
    let Some(model) = model else {
        for check in [Check::ExternalData, Check::Contract, Check::Inference] {
            checks.skip(check, "the model did not decode".into());
        }
        return Ok(finish(report, checks, started));
    };
    let graph = model.graph.clone().unwrap_or_default();
    let model_dir = model_path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    checks.record(Check::ExternalData, structure::check_external_data(&model, &model_dir));

    let config_path = export_dir.join("config.json");
    let config = if config_path.is_file() {
        Gpt2Config::load(&config_path).map(|(c, _)| c).map_err(|e| e.to_string())
    } else {
        Err(format!("no config.json in {}", export_dir.display()))
    };
    let task = config.as_ref().map_err(Clone::clone).and_then(|c| task_of(&model, c));
    report.task = task.as_ref().ok().map(|t| t.name().to_string());
    report.precision = metadata(&model, "gpt2c.precision").map(String::from);
    let search_op = search::search_node(&graph).map(|n| n.op_type().to_string());
    match (&config, &task, &search_op) {
        (_, _, Some(op)) => {
            let fixed = !graph.input.iter().any(|i| i.name() == "max_length");
            checks.record(Check::Contract, contract::check(&graph, &search::outer_contract(op, fixed)))
        }
        (Ok(c), Ok(t), None) => {
            checks.record(Check::Contract, contract::check(&graph, &contract::Contract::new(c, *t, float_type(&graph))))
        }
        (Err(e), _, None) | (_, Err(e), None) => {
            checks.skip(Check::Contract, format!("the contract needs the export's config.json and task: {e}"))
        }
    }
    match infer::infer_graph(&graph) {
        Ok(_) => checks.record(Check::Inference, Vec::new()),
        Err(d) => checks.record(Check::Inference, vec![Finding { check: Check::Inference, message: d.to_string() }]),
    }
    let decoder = search_op.as_ref().and_then(|_| search::decoder_model(&model));
    match (&decoder, &config, &search_op) {
        (Some(decoder), Ok(c), Some(_)) => checks.record(Check::Decoder, check_decoder(decoder, c)),
        (None, _, Some(op)) => checks.record(
            Check::Decoder,
            vec![Finding { check: Check::Decoder, message: format!("the {op} node has no decoder subgraph") }],
        ),
        (Some(_), Err(e), _) => checks.skip(Check::Decoder, format!("the decoder's contract needs config.json: {e}")),
        // No search operator: the graph is the decoder, checked above.
        _ => {}
    }

    report.timings_s.insert("structure".into(), started.elapsed().as_secs_f64());
    if let Some(reference_dir) = &options.reference {
        let task = task.map_err(|e| VerifyError::Reference(format!("cannot tell the export's task: {e}")))?;
        let tolerance = options.tolerance.unwrap_or_else(|| {
            let (dtype, quantize) = formats(&model);
            Tolerance::for_formats(&dtype, &quantize)
        });
        report.tolerance = Some(tolerance);
        if checks.failed(Check::ExternalData) || checks.failed(Check::Protobuf) {
            // A backend would follow the external paths verify just refused.
            for kind in &options.backends {
                report.numeric.push(NumericResult {
                    backend: kind.name(),
                    case: "all",
                    passed: false,
                    error: Some("not run: the model failed the external-data check".into()),
                    outputs: Vec::new(),
                });
            }
        } else {
            let decoder = decoder.map(|d| pb::encode_model(&d));
            let (numeric, timings) =
                compare_with_reference(&model_path, decoder, reference_dir, task, tolerance, options)?;
            report.numeric = numeric;
            report.timings_s.extend(timings);
        }
    }
    Ok(finish(report, checks, started))
}

fn finish(mut report: Report, checks: Checks, started: Instant) -> Report {
    report.checks = checks.0;
    report.passed = report.checks.iter().all(|c| c.status != Status::Fail) && report.numeric.iter().all(|n| n.passed);
    report.elapsed_s = started.elapsed().as_secs_f64();
    report
}

/// A search operator's decoder as a model of its own: every structural check that needs nothing
/// but the model, its contract, and inference; findings say they are the decoder's.
fn check_decoder(decoder: &pb::ModelProto, config: &Gpt2Config) -> Vec<Finding> {
    let graph = decoder.graph.clone().unwrap_or_default();
    let mut found: Vec<Finding> = structure::check_model(decoder);
    found.extend(contract::check(&graph, &search::decoder_contract(config, float_type(&graph))));
    if let Err(d) = infer::infer_graph(&graph) {
        found.push(Finding { check: Check::Inference, message: d.to_string() });
    }
    found
        .into_iter()
        .map(|f| Finding { check: Check::Decoder, message: format!("decoder {}: {}", f.check.name(), f.message) })
        .collect()
}

/// Seconds per phase, by phase name.
type Timings = Vec<(String, f64)>;

/// Runs every case on every backend and compares with the reference forward. With a search
/// operator's `decoder` (its model's bytes), the decoder runs instead, its inputs and outputs mapped
/// to and from the plain export's, the reference's logits cut to the last position it returns.
fn compare_with_reference(
    model_path: &Path,
    decoder: Option<Vec<u8>>,
    reference_dir: &Path,
    task: Task,
    tolerance: Tolerance,
    options: &VerifyOptions,
) -> Result<(Vec<NumericResult>, Timings), VerifyError> {
    let started = Instant::now();
    let ckpt = Checkpoint::open(reference_dir)
        .map_err(|e| VerifyError::ReferenceCheckpoint { path: reference_dir.into(), source: Box::new(e) })?;
    let model = reference::ReferenceModel::load(&ckpt, task).map_err(|e| VerifyError::ReferenceModel(Box::new(e)))?;
    let mut rng = Rng::new(options.seed);
    let mut cases = numeric::cases(&ckpt.config, task, &mut rng).map_err(VerifyError::Reference)?;
    // Expected outputs per case; the decode step is fed the padded batch's reference cache.
    let mut expected: Vec<Vec<(String, gpt2c_runtime::HostTensor)>> = Vec::new();
    for case in &cases {
        expected.push(run_reference(&model, case)?);
    }
    if task.with_past()
        && let (Some(last), Some(presents)) = (cases.last(), expected.last())
    {
        let step =
            numeric::decode_case(&ckpt.config, task, last, presents, &mut rng).map_err(VerifyError::Reference)?;
        expected.push(run_reference(&model, &step)?);
        cases.push(step);
    }
    for case in &mut cases {
        case.logits_last_only = decoder.is_some();
    }
    let mut timings = vec![("reference".to_string(), started.elapsed().as_secs_f64())];
    let runner_options = RunnerOptions { threads: options.threads, ..Default::default() };
    let mut results = Vec::new();
    for &kind in &options.backends {
        let started = Instant::now();
        let loaded = match &decoder {
            Some(bytes) => gpt2c_runtime::backend::load_runner_bytes(kind, model_path, bytes.clone(), &runner_options),
            None => gpt2c_runtime::load_runner(kind, model_path, &runner_options),
        };
        let mut runner = match loaded {
            Ok(r) => r,
            Err(e) => {
                results.push(NumericResult {
                    backend: kind.name(),
                    case: "load",
                    passed: false,
                    error: Some(e.to_string()),
                    outputs: Vec::new(),
                });
                continue;
            }
        };
        for (case, want) in cases.iter().zip(&expected) {
            let n_layer = ckpt.config.n_layer;
            let ran = match &decoder {
                Some(_) => search::to_decoder_inputs(&case.inputs, n_layer)
                    .map_err(|e| e.to_string())
                    .and_then(|inputs| {
                        let feed: Vec<(&str, &gpt2c_runtime::HostTensor)> =
                            inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
                        runner.run(&feed).map_err(|e| e.to_string())
                    })
                    .and_then(search::from_decoder_outputs)
                    .map(|got| (got, search::last_position_logits(want.clone()))),
                None => {
                    let feed: Vec<(&str, &gpt2c_runtime::HostTensor)> =
                        case.inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
                    runner.run(&feed).map(|got| (got, want.clone())).map_err(|e| e.to_string())
                }
            };
            let result = match ran {
                Ok((got, want)) => {
                    let outputs = numeric::compare(task, case, &got, &want, tolerance);
                    NumericResult {
                        backend: kind.name(),
                        case: case.name,
                        passed: outputs.iter().all(|o| o.passed),
                        error: None,
                        outputs,
                    }
                }
                Err(e) => NumericResult {
                    backend: kind.name(),
                    case: case.name,
                    passed: false,
                    error: Some(e),
                    outputs: Vec::new(),
                },
            };
            results.push(result);
        }
        timings.push((kind.name().to_string(), started.elapsed().as_secs_f64()));
    }
    Ok((results, timings))
}

fn run_reference(
    model: &reference::ReferenceModel,
    case: &Case,
) -> Result<Vec<(String, gpt2c_runtime::HostTensor)>, VerifyError> {
    let feed: Vec<(&str, &gpt2c_runtime::HostTensor)> = case.inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    model.run(&feed).map_err(|e| VerifyError::ReferenceRun { case: case.name, source: Box::new(e) })
}

impl Report {
    /// The human-readable report: one line per check and per compared output, then the verdict.
    pub fn to_text(&self) -> String {
        let mut s = format!("verify {}\n", self.model);
        if let Some(t) = &self.task {
            s.push_str(&format!("  task {t}, precision {}\n", self.precision.as_deref().unwrap_or("unknown")));
        }
        for c in &self.checks {
            let mark = match c.status {
                Status::Pass => "ok  ",
                Status::Fail => "FAIL",
                Status::Skipped => "skip",
            };
            s.push_str(&format!("{mark} {}\n", c.check.name()));
            for f in &c.findings {
                s.push_str(&format!("       {f}\n"));
            }
        }
        if let (Some(reference), Some(t)) = (&self.reference, &self.tolerance) {
            s.push_str(&format!("reference {reference} (tolerance: abs {} + rel {} × max|reference|)\n", t.abs, t.rel));
        }
        for n in &self.numeric {
            if let Some(e) = &n.error {
                s.push_str(&format!("FAIL {} {}: {e}\n", n.backend, n.case));
            }
            let detail = |o: &OutputError| {
                o.problem.clone().unwrap_or_else(|| {
                    format!("max abs error {:.3e}, max rel error {:.3e}", o.max_abs_error, o.max_rel_error)
                })
            };
            // Passing outputs fold into one line with the worst of them; failures are listed.
            let worst =
                n.outputs.iter().filter(|o| o.passed).max_by(|a, b| a.max_rel_error.total_cmp(&b.max_rel_error));
            if let Some(w) = worst {
                let count = n.outputs.iter().filter(|o| o.passed).count();
                s.push_str(&format!(
                    "ok   {} {}: {count} outputs, worst {} {}\n",
                    n.backend,
                    n.case,
                    w.output,
                    detail(w)
                ));
            }
            for o in n.outputs.iter().filter(|o| !o.passed) {
                s.push_str(&format!("FAIL {} {} {}: {}\n", n.backend, n.case, o.output, detail(o)));
            }
        }
        let phases: Vec<String> = self.timings_s.iter().map(|(k, v)| format!("{k} {v:.2}s")).collect();
        s.push_str(&format!(
            "{} in {:.2}s ({})\n",
            if self.passed { "PASSED" } else { "FAILED" },
            self.elapsed_s,
            phases.join(", ")
        ));
        s
    }
}
