//! Prompt lookup decoding (`prompt_lookup_num_tokens`) gives plain greedy search's ids, recorded from
//! transformers by `models/make_generation_fixtures.py --lookup-only` (generation/prompt-lookup.json),
//! on every backend and cache form, while taking several tokens per forward pass.

use std::path::Path;

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::gpt2::{GraphOptions, KvCache, Precision, Target};
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_runtime::generate::{GenerateError, GenerationConfig};
use gpt2c_runtime::session::Observed;
use gpt2c_runtime::{BackendKind, ExportedModel, RunnerOptions, generate};
use gpt2c_tests::{backends, export_fixture, fixture, shared_dir};
use serde_json::{Map, Value, json};

struct Case {
    name: String,
    model: String,
    prompt: Vec<u32>,
    kwargs: Map<String, Value>,
    /// Plain greedy search's sequence in transformers.
    greedy: Vec<u32>,
    /// transformers' own prompt lookup output: greedy's, possibly one token longer.
    lookup: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let path = fixture("generation/prompt-lookup.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases: Vec<Case> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let one = |key: &str| -> Vec<u32> {
                let rows: Vec<Vec<u32>> = serde_json::from_value(c[key].clone()).unwrap();
                assert_eq!(rows.len(), 1, "{key}: one prompt per case");
                rows.into_iter().next().unwrap()
            };
            let name = c["name"].as_str().unwrap().to_string();
            Case {
                model: if name.starts_with("tiny_default") { "tiny-default" } else { "tiny-trained" }.into(),
                name,
                prompt: one("prompts"),
                kwargs: c["kwargs"].as_object().unwrap().clone(),
                greedy: one("sequences"),
                lookup: one("lookup_sequences"),
            }
        })
        .collect();
    assert_eq!(cases.len(), 6, "{}", path.display());
    cases
}

/// Runs every case of `model_name` on `kinds` with prompt lookup and asserts greedy's ids; returns
/// (new tokens, forward passes) over all cases.
fn check(export_dir: &Path, model_name: &str, kinds: &[BackendKind]) -> (usize, usize) {
    let model = ExportedModel::open(export_dir).unwrap();
    let limits = model.config.limits();
    let (mut tokens, mut passes) = (0, 0);
    for &kind in kinds {
        let options = RunnerOptions { logits: LogitsScope::All, ..Default::default() };
        let mut session = model.session(kind, &options).unwrap();
        for case in cases().iter().filter(|c| c.model == model_name) {
            let config = GenerationConfig::from_json(&model.generation_json, &case.kwargs).unwrap();
            assert!(config.prompt_lookup_num_tokens.is_some(), "{}", case.name);
            let mut forwards = 0;
            let mut counted = Observed { inner: session.as_mut(), on_forward: &mut |_| forwards += 1 };
            let prompts = [case.prompt.clone()];
            let out = generate(&mut counted, limits, &prompts, &config, None, &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{} on {}: {e}", case.name, kind.name()));
            assert_eq!(out.sequences, vec![case.greedy.clone()], "{} on {}", case.name, kind.name());
            assert!(case.lookup.starts_with(&case.greedy), "{}: the fixture's lookup run", case.name);
            let new = case.greedy.len() - case.prompt.len();
            assert_eq!(out.results[0].tokens.len(), new, "{}", case.name);
            assert_eq!(out.results[0].token_logprobs.len(), new, "{}", case.name);
            assert!(forwards <= new, "{} on {}: {forwards} passes for {new} tokens", case.name, kind.name());
            tokens += new;
            passes += forwards;
        }
    }
    (tokens, passes)
}

fn ort_options(kv_cache: KvCache) -> ExportOptions {
    let precision = Precision { target: Target::Ort, kv_cache, ..Default::default() };
    ExportOptions { graph: GraphOptions { opset: 23, precision, ..Default::default() }, ..Default::default() }
}

/// tiny-trained repeats its own text, so drafts are taken from it: fewer passes than tokens, and
/// rejected drafts dropped from the cache on each engine (host tensors through tract, ONNX Runtime's
/// bound buffers, the shared buffer GroupQueryAttention appends to).
#[test]
fn prompt_lookup_gives_greedy_ids_on_every_engine() {
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ort: Vec<BackendKind> = backends().into_iter().filter(|k| *k == BackendKind::Ort).collect();
    let exports = [
        ("default", ExportOptions::default(), backends()),
        ("target-ort", ort_options(KvCache::Concat), ort.clone()),
        ("shared-cache", ort_options(KvCache::Shared), ort),
    ];
    for (name, options, kinds) in exports {
        let out = tmp.path().join(name);
        gpt2c_compiler::export(&shared.join("models/tiny-trained"), &out, &options, &mut |_| {}).unwrap();
        let (tokens, passes) = check(&out, "tiny-trained", &kinds);
        eprintln!("{name}: {tokens} tokens in {passes} passes");
        if !kinds.is_empty() {
            assert!(passes < tokens, "{name}: {passes} passes for {tokens} tokens: no draft was ever kept");
        }
    }
}

#[test]
fn prompt_lookup_gives_greedy_ids_on_random_weights() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    check(&out, "tiny-default", &backends());
}

fn refused(result: Result<impl std::fmt::Debug, GenerateError>, field: &str) {
    let err = result.unwrap_err();
    assert_eq!(err.param(), Some(field), "{err}");
}

/// Settings and sessions prompt lookup cannot serve are refused by name before any compute.
#[test]
fn prompt_lookup_refuses_what_it_cannot_serve() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    let model = ExportedModel::open(&out).unwrap();
    let limits = model.config.limits();
    let Some(&kind) = backends().first() else { return };
    let config = |extra: Value| {
        let mut kwargs = json!({"max_new_tokens": 5, "prompt_lookup_num_tokens": 3});
        kwargs.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        GenerationConfig::from_json(&model.generation_json, kwargs.as_object().unwrap())
    };
    let prompt = vec![5u32, 6, 7, 5, 6];
    let mut all = model.session(kind, &RunnerOptions { logits: LogitsScope::All, ..Default::default() }).unwrap();
    let mut run = |config: &GenerationConfig, prompts: &[Vec<u32>]| {
        generate(all.as_mut(), limits, prompts, config, None, &mut |_, _| {}).map(|o| o.sequences)
    };
    refused(run(&config(json!({})).unwrap(), &[prompt.clone(), prompt.clone()]), "prompt_lookup_num_tokens");
    refused(config(json!({"do_sample": true})).and_then(|c| c.validate(1000)), "prompt_lookup_num_tokens");
    refused(config(json!({"num_beams": 2})).and_then(|c| c.validate(1000)), "prompt_lookup_num_tokens");
    refused(config(json!({"prompt_lookup_num_tokens": 0})).and_then(|c| c.validate(1000)), "prompt_lookup_num_tokens");
    assert!(run(&config(json!({})).unwrap(), std::slice::from_ref(&prompt)).is_ok());
    // Generation's usual session computes the last position only: nothing to verify drafts with.
    let mut last = model.session(kind, &RunnerOptions { logits: LogitsScope::Last, ..Default::default() }).unwrap();
    let c = config(json!({})).unwrap();
    refused(generate(last.as_mut(), limits, &[prompt], &c, None, &mut |_, _| {}), "prompt_lookup_num_tokens");
}
