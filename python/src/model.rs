//! `gpt2c.Model`: an export folder loaded on a backend, generating on a thread of its own.
//!
//! The loaded session stays on one worker thread (sessions are not shared between threads); each
//! call sends it a job and waits with the GIL released, checking for Ctrl-C as it waits, so other
//! Python threads run meanwhile. Calls on one model run one after another.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use gpt2c_runtime::backend::LogitsScope;
use gpt2c_runtime::generate::{GenerationConfig, Mode};
use gpt2c_runtime::text::{BackendChoice, TextError, TextGenerator};
use gpt2c_runtime::{RunnerOptions, TextTokenizer};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use serde_json::{Map, Value};

use crate::errors::{Kind, argument, exception, from_anyhow};

/// What a job generates from.
enum Prompts {
    Text(Vec<String>),
    Ids(Vec<Vec<u32>>),
}

/// The result of a job: each returned sequence's text and ids (transformers' padded sequences).
struct Generated {
    texts: Vec<String>,
    sequences: Vec<Vec<u32>>,
}

struct Job {
    prompts: Prompts,
    overrides: Map<String, Value>,
    /// Streaming: each piece of text as it is complete UTF-8.
    pieces: Option<Sender<String>>,
    reply: Sender<anyhow::Result<Generated>>,
}

/// A receiver Python threads wait on (behind a lock: a receiver has one reader at a time).
struct Inbox<T>(Mutex<Receiver<T>>);

impl<T: Send> Inbox<T> {
    fn new(rx: Receiver<T>) -> Inbox<T> {
        Inbox(Mutex::new(rx))
    }

    /// The next message (None once every sender is gone), waited for with the GIL released and
    /// Ctrl-C raised as KeyboardInterrupt.
    fn wait(&self, py: Python<'_>) -> PyResult<Option<T>> {
        loop {
            let next = py.detach(|| match self.0.lock() {
                Ok(rx) => rx.recv_timeout(Duration::from_millis(50)),
                Err(_) => Err(RecvTimeoutError::Disconnected),
            });
            match next {
                Ok(v) => return Ok(Some(v)),
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => py.check_signals()?,
            }
        }
    }
}

/// The error of a call whose worker has gone (it panicked, or the model is being dropped).
fn stopped(py: Python<'_>) -> PyErr {
    exception(py, Kind::Other, "the model's worker thread has stopped".into())
}

/// A reply from the worker as the call's result: its value, its error as an exception, or the
/// worker gone.
fn outcome<T>(py: Python<'_>, reply: Option<anyhow::Result<T>>) -> PyResult<T> {
    match reply {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(from_anyhow(py, &e)),
        None => Err(stopped(py)),
    }
}

fn worker(mut generator: TextGenerator, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let Job { prompts, overrides, pieces, reply } = job;
        let result = run_job(&mut generator, prompts, &overrides, pieces);
        let _ = reply.send(result);
    }
}

fn run_job(
    generator: &mut TextGenerator,
    prompts: Prompts,
    overrides: &Map<String, Value>,
    pieces: Option<Sender<String>>,
) -> anyhow::Result<Generated> {
    let config = generator.config(overrides)?;
    let ids = match prompts {
        Prompts::Ids(ids) => ids,
        Prompts::Text(texts) => texts
            .iter()
            .map(|p| generator.tokenizer.encode(p).map_err(TextError::Tokenizer))
            .collect::<Result<Vec<_>, _>>()?,
    };
    if pieces.is_some() {
        let rows = ids.len() * config.num_return_sequences;
        if !matches!(config.mode(), Mode::Greedy | Mode::Sample) || rows != 1 {
            return Err(TextError::Generate(gpt2c_runtime::GenerateError::Config {
                field: if rows != 1 { "num_return_sequences" } else { "num_beams" }.into(),
                message: "stream() streams one sequence of greedy search or sampling; use generate() for beams \
                          and several sequences"
                    .into(),
            })
            .into());
        }
    }
    let out = generator.generate_ids(&ids, &config, &mut |_, piece| {
        if let Some(tx) = &pieces {
            let _ = tx.send(piece.to_string());
        }
    })?;
    Ok(Generated { texts: out.texts, sequences: out.output.sequences })
}

/// A GPT-2 export loaded for generation.
///
/// `Model(path, backend="auto", threads=None, ep=None, ep_strict=False)`: `path` is an export
/// folder written by `gpt2c export`; `backend` is "auto" (ONNX Runtime when its library is found,
/// else tract), "ort" or "tract"; `threads` the threads per operator; `ep` ONNX Runtime's execution
/// providers in order of preference (e.g. ["cuda", "cpu"]), as `gpt2c generate` takes them.
///
/// Generation settings are transformers' generate() keywords (max_new_tokens, do_sample, top_p,
/// num_beams, seed, …); those not given come from the folder's generation_config.json, then
/// transformers' defaults. The same prompt and settings give transformers' tokens.
#[pyclass(module = "gpt2c", frozen)]
pub struct Model {
    jobs: Sender<Job>,
    tokenizer: TextTokenizer,
    description: String,
    notices: Vec<String>,
}

fn overrides(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Map<String, Value>> {
    let mut map = Map::new();
    if let Some(kwargs) = kwargs {
        for (key, value) in kwargs.iter() {
            let key: String = key.extract()?;
            // A misspelt setting is refused, as transformers' generate() refuses unused keywords.
            if !GenerationConfig::FIELDS.contains(&key.as_str()) {
                let message =
                    format!("unknown generation setting `{key}`: the keywords are transformers' generate() options");
                return Err(exception(kwargs.py(), Kind::Setting(Some(key)), message));
            }
            if value.is_none() {
                continue;
            }
            let v: Value = pythonize::depythonize(&value).map_err(|e| {
                exception(value.py(), Kind::Setting(Some(key.clone())), format!("generation setting `{key}`: {e}"))
            })?;
            map.insert(key, v);
        }
    }
    Ok(map)
}

impl Model {
    fn submit(
        &self,
        py: Python<'_>,
        prompts: Prompts,
        kwargs: Option<&Bound<'_, PyDict>>,
        pieces: Option<Sender<String>>,
    ) -> PyResult<Inbox<anyhow::Result<Generated>>> {
        let (reply, rx) = mpsc::channel();
        let job = Job { prompts, overrides: overrides(kwargs)?, pieces, reply };
        self.jobs.send(job).map_err(|_| stopped(py))?;
        Ok(Inbox::new(rx))
    }

    fn run(&self, py: Python<'_>, prompts: Prompts, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Generated> {
        let reply = self.submit(py, prompts, kwargs, None)?;
        outcome(py, reply.wait(py)?)
    }
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, backend = None, threads = None, ep = None, ep_strict = None))]
    fn new(
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        backend: Option<&Bound<'_, PyAny>>,
        threads: Option<&Bound<'_, PyAny>>,
        ep: Option<&Bound<'_, PyAny>>,
        ep_strict: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Model> {
        let path: PathBuf = argument(path, "path", "a path to an export folder")?;
        let backend: String = match backend {
            Some(b) => argument(b, "backend", "\"auto\", \"ort\" or \"tract\"")?,
            None => "auto".into(),
        };
        let threads: Option<usize> =
            threads.map(|t| argument(t, "threads", "a positive whole number or None")).transpose()?;
        let ep: Option<Vec<String>> =
            ep.map(|e| argument(e, "ep", "a list of execution provider names or None")).transpose()?;
        let ep_strict: bool =
            ep_strict.map(|e| argument(e, "ep_strict", "True or False")).transpose()?.unwrap_or(false);
        let choice = match backend.as_str() {
            "auto" => BackendChoice::Auto,
            "ort" => BackendChoice::Ort,
            "tract" => BackendChoice::Tract,
            other => {
                let message = format!("backend `{other}`: expected \"auto\", \"ort\" or \"tract\"");
                return Err(exception(py, Kind::Setting(Some("backend".into())), message));
            }
        };
        let options = RunnerOptions {
            threads,
            execution_providers: ep.unwrap_or_default(),
            ep_strict,
            logits: LogitsScope::Last,
            ..Default::default()
        };
        options.validate().map_err(|e| from_anyhow(py, &e.into()))?;
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (loaded_tx, loaded_rx) = mpsc::channel();
        // The worker loads the model and keeps it: a session never leaves its thread.
        std::thread::Builder::new()
            .name("gpt2c-model".into())
            .spawn(move || match TextGenerator::open(&path, choice, &options) {
                Ok(generator) => {
                    let info = (generator.tokenizer.clone(), generator.description.clone(), generator.notices.clone());
                    let _ = loaded_tx.send(Ok(info));
                    worker(generator, job_rx);
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(anyhow::Error::from(e)));
                }
            })
            .map_err(|e| exception(py, Kind::Other, format!("cannot start the model's thread: {e}")))?;
        let (tokenizer, description, notices) = outcome(py, Inbox::new(loaded_rx).wait(py)?)?;
        Ok(Model { jobs, tokenizer, description, notices })
    }

    /// What runs the graph: the backend, its version and execution providers.
    #[getter]
    fn backend(&self) -> &str {
        &self.description
    }

    /// What loading had to tell: a backend chosen by `auto`, a provider skipped.
    #[getter]
    fn notices(&self) -> Vec<String> {
        self.notices.clone()
    }

    /// Generates from `prompt` (a string, or a list of strings generated as one left-padded
    /// batch) with transformers' generate() keywords. Returns the text (prompt + continuation) of
    /// each returned sequence: a string for one string prompt and one sequence, else a list.
    #[pyo3(signature = (prompt, **kwargs))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let one = prompt.is_instance_of::<PyString>();
        let prompts: Vec<String> = if one {
            vec![argument(prompt, "prompt", "a string or a list of strings")?]
        } else {
            argument(prompt, "prompt", "a string or a list of strings")?
        };
        let generated = self.run(py, Prompts::Text(prompts), kwargs)?;
        if let (true, [text]) = (one, generated.texts.as_slice()) {
            return Ok(PyString::new(py, text).into_any().unbind());
        }
        Ok(PyList::new(py, generated.texts)?.into_any().unbind())
    }

    /// Generates from token ids (a list of prompts, each a list of ids) with transformers'
    /// generate() keywords. Returns what transformers' generate() returns: every returned
    /// sequence as the left-padded prompt and its new tokens, padded to one length.
    #[pyo3(signature = (input_ids, **kwargs))]
    fn generate_ids(
        &self,
        py: Python<'_>,
        input_ids: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Vec<Vec<u32>>> {
        let ids: Vec<Vec<u32>> = argument(input_ids, "input_ids", "a list of prompts, each a list of token ids")?;
        Ok(self.run(py, Prompts::Ids(ids), kwargs)?.sequences)
    }

    /// Streams the continuation of one prompt (greedy search or sampling, one sequence): an
    /// iterator of text pieces, each complete UTF-8, as the tokens are chosen.
    #[pyo3(signature = (prompt, **kwargs))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Stream> {
        let prompt: String = argument(prompt, "prompt", "a string")?;
        let (tx, pieces) = mpsc::channel();
        let done = self.submit(py, Prompts::Text(vec![prompt]), kwargs, Some(tx))?;
        Ok(Stream { pieces: Inbox::new(pieces), done, ended: AtomicBool::new(false) })
    }

    /// Token ids of `text` (the export's tokenizer).
    fn encode(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let text: String = argument(text, "text", "a string")?;
        self.tokenizer.encode(&text).map_err(|e| exception(py, Kind::Setting(Some("text".into())), e))
    }

    /// The text of token ids.
    fn decode(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let ids: Vec<u32> = argument(ids, "ids", "a list of token ids")?;
        self.tokenizer.decode(&ids).map_err(|e| exception(py, Kind::Setting(Some("ids".into())), e))
    }

    fn __repr__(&self) -> String {
        format!("gpt2c.Model(backend={:?})", self.description)
    }
}

/// The pieces of `Model.stream()`; an error raises where it happens.
#[pyclass(module = "gpt2c", frozen)]
pub struct Stream {
    pieces: Inbox<String>,
    done: Inbox<anyhow::Result<Generated>>,
    ended: AtomicBool,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        if self.ended.load(Ordering::Acquire) {
            return Ok(None);
        }
        if let Some(piece) = self.pieces.wait(py)? {
            return Ok(Some(piece));
        }
        // The job dropped its sender: it has ended, well or not.
        let result = self.done.wait(py)?;
        self.ended.store(true, Ordering::Release);
        outcome(py, result).map(|_| None)
    }
}
