//! Speculative decoding — prompt lookup (`prompt_lookup_num_tokens`) and an assistant model — gives
//! plain greedy search's ids, recorded from transformers by `models/make_generation_fixtures.py
//! --lookup-only` (generation/prompt-lookup.json), on every backend and cache form, while taking
//! several tokens per forward pass.

use std::path::Path;

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::gpt2::{GraphOptions, KvCache, Precision, Target};
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_runtime::generate::{Assistant, GenerateError, GenerationConfig, generate_assisted};
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

/// A one-layer GPT-2 with random weights and GPT-2's vocabulary: an assistant that rarely agrees.
fn random_assistant(dir: &Path, n_positions: usize) -> std::path::PathBuf {
    let config = dir.join(format!("assistant-config-{n_positions}.json"));
    let c = json!({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 1, "n_embd": 32,
        "n_head": 2, "n_positions": n_positions, "vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256});
    std::fs::write(&config, c.to_string()).unwrap();
    let out = dir.join(format!("assistant-random-{n_positions}"));
    let options = ExportOptions { random_init: Some(3), ..Default::default() };
    gpt2c_compiler::export(&config, &out, &options, &mut |_| {}).unwrap();
    out
}

/// Assisted generation gives the target's greedy ids whatever the assistant drafts: the same model
/// as its own assistant (every confident draft kept) and a random one (almost every draft
/// rejected, so both caches are cut back every pass), on every backend and cache form.
#[test]
fn an_assistant_model_gives_greedy_ids() {
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let random = random_assistant(tmp.path(), 512);
    let ort: Vec<BackendKind> = backends().into_iter().filter(|k| *k == BackendKind::Ort).collect();
    let targets =
        [("default", ExportOptions::default(), backends()), ("shared-cache", ort_options(KvCache::Shared), ort)];
    for (name, options, kinds) in targets {
        let target = tmp.path().join(name);
        gpt2c_compiler::export(&shared.join("models/tiny-trained"), &target, &options, &mut |_| {}).unwrap();
        let model = ExportedModel::open(&target).unwrap();
        for &kind in &kinds {
            let all = RunnerOptions { logits: LogitsScope::All, ..Default::default() };
            let mut session = model.session(kind, &all).unwrap();
            for (assistant_dir, label) in [(&tmp.path().join("default"), "itself"), (&random, "random")] {
                let assistant_model = ExportedModel::open(assistant_dir).unwrap();
                let last = RunnerOptions::default().for_assistant();
                let mut assistant = assistant_model.session(kind, &last).unwrap();
                let (mut tokens, mut passes) = (0, 0);
                for case in cases().iter().filter(|c| c.model == "tiny-trained") {
                    let mut kwargs = case.kwargs.clone();
                    kwargs.remove("prompt_lookup_num_tokens");
                    kwargs.remove("max_matching_ngram_size");
                    kwargs.insert("num_assistant_tokens".into(), json!(5));
                    let config = GenerationConfig::from_json(&model.generation_json, &kwargs).unwrap();
                    let mut forwards = 0;
                    let mut counted = Observed { inner: session.as_mut(), on_forward: &mut |_| forwards += 1 };
                    let helper = Assistant { session: assistant.as_mut(), limits: assistant_model.config.limits() };
                    let prompts = [case.prompt.clone()];
                    let out = generate_assisted(
                        &mut counted,
                        helper,
                        model.config.limits(),
                        &prompts,
                        &config,
                        None,
                        &mut |_, _| {},
                    )
                    .unwrap_or_else(|e| panic!("{} with {label} on {name}/{}: {e}", case.name, kind.name()));
                    assert_eq!(
                        out.sequences,
                        vec![case.greedy.clone()],
                        "{} with {label} on {name}/{}",
                        case.name,
                        kind.name()
                    );
                    tokens += case.greedy.len() - case.prompt.len();
                    passes += forwards;
                }
                eprintln!("{name}/{}: assistant {label}: {tokens} tokens in {passes} passes", kind.name());
                if label == "itself" {
                    assert!(passes * 2 < tokens, "{name}: its own assistant kept too few drafts ({passes} passes)");
                }
            }
        }
    }
}

/// What an assistant cannot serve is refused by name before any compute.
#[test]
fn an_assistant_model_is_refused_where_it_cannot_draft() {
    let Some(&kind) = backends().first() else { return };
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    gpt2c_compiler::export(&shared.join("models/tiny-trained"), &target, &ExportOptions::default(), &mut |_| {})
        .unwrap();
    let model = ExportedModel::open(&target).unwrap();
    let all = RunnerOptions { logits: LogitsScope::All, ..Default::default() };
    let mut session = model.session(kind, &all).unwrap();
    let (_t, small_vocab) = export_fixture("tiny-default", &ExportOptions::default());
    let random = random_assistant(tmp.path(), 512);
    let short = random_assistant(tmp.path(), 6);
    let prompt = vec![464u32, 2068, 7586];
    let cases: [(&Path, Value, usize, &str); 6] = [
        (&random, json!({"do_sample": true}), 1, "sampling"),
        (&random, json!({"num_beams": 2}), 1, "beams"),
        (&random, json!({}), 2, "two prompts"),
        (&random, json!({"prompt_lookup_num_tokens": 3}), 1, "both drafters"),
        (&small_vocab, json!({}), 1, "another vocabulary"),
        (&short, json!({}), 1, "a context shorter than prompt + max_new_tokens"),
    ];
    for (dir, extra, n_prompts, what) in cases {
        let assistant_model = ExportedModel::open(dir).unwrap();
        let mut assistant = assistant_model.session(kind, &RunnerOptions::default()).unwrap();
        let mut kwargs = json!({"max_new_tokens": 4});
        kwargs.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let config = GenerationConfig::from_json(&model.generation_json, kwargs.as_object().unwrap()).unwrap();
        let helper = Assistant { session: assistant.as_mut(), limits: assistant_model.config.limits() };
        let prompts = vec![prompt.clone(); n_prompts];
        let result =
            generate_assisted(session.as_mut(), helper, model.config.limits(), &prompts, &config, None, &mut |_, _| {});
        refused(result, "assistant_model");
        assert_eq!(session.past_len(), 0, "{what}: nothing ran");
    }
}
