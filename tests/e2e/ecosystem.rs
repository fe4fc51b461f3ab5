//! Exports in the runtimes people deploy with, driven through their real clients: each
//! generates transformers' greedy token ids (models/generation/*.json) from a gpt2c export.

use std::path::Path;
use std::process::Command;

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::gpt2::{GraphOptions, KvCache, Precision, Target};
use gpt2c_compiler::layout::Layout;
use gpt2c_tests::{export_fixture, fixture, python_with, repo_root, shared_dir};
use serde_json::Value;

/// The single-prompt greedy cases of a generation fixture with an explicit max_new_tokens:
/// (prompt, expected sequence).
fn greedy_cases(file: &str) -> Vec<(Vec<u64>, Vec<u64>)> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(fixture(file)).unwrap()).unwrap();
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect::<Vec<_>>();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            let k = &c["kwargs"];
            k["do_sample"] == Value::Bool(false)
                && c["prompts"].as_array().unwrap().len() == 1
                && k.get("num_beams").is_none()
                && k.get("max_new_tokens").is_some()
                && k.as_object()
                    .unwrap()
                    .keys()
                    .all(|k| ["max_new_tokens", "do_sample", "pad_token_id"].contains(&k.as_str()))
        })
        .flat_map(|c| {
            let prompts: Vec<Vec<u64>> = c["prompts"].as_array().unwrap().iter().map(ids).collect();
            let sequences: Vec<Vec<u64>> = c["sequences"].as_array().unwrap().iter().map(ids).collect();
            assert_eq!(prompts.len(), sequences.len(), "{}: one sequence per prompt", c["name"]);
            prompts.into_iter().zip(sequences).collect::<Vec<_>>()
        })
        .collect()
}

fn genai_generate(python: &Path, dir: &Path, cases: &[(Vec<u64>, Vec<u64>)]) -> Vec<Vec<u64>> {
    let request: Vec<Value> =
        cases.iter().map(|(p, s)| serde_json::json!({ "prompt": p, "max_length": s.len() })).collect();
    let file = dir.join("cases.json");
    std::fs::write(&file, serde_json::to_string(&request).unwrap()).unwrap();
    let out = Command::new(python)
        .arg(repo_root().join("tests/clients/genai_generate.py"))
        .arg(dir)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "onnxruntime-genai: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `--layout genai`: onnxruntime-genai (PyPI) loads the folder through genai_config.json and its
/// greedy search gives transformers' ids, on the tiny fixture and on the model trained on prose.
#[test]
fn onnxruntime_genai_generates_transformers_greedy_ids() {
    let options = ExportOptions { layout: Layout::Genai, ..Default::default() };
    genai_matches_transformers(&options, &["generation/tiny-trained.json"]);
}

/// `--target ort --kv-cache shared --layout genai`: genai_config.json turns on genai's
/// `past_present_share_buffer`, so genai binds one `[batch, heads, max_length, head_dim]` buffer
/// per cache tensor as both past and present and the graph appends into it; the ids are
/// transformers', also for prompts whose generation passes 64 positions.
#[test]
fn onnxruntime_genai_shares_one_cache_buffer_with_a_shared_export() {
    let precision = Precision { target: Target::Ort, kv_cache: KvCache::Shared, ..Default::default() };
    let options = ExportOptions {
        graph: GraphOptions { opset: 23, precision, ..Default::default() },
        layout: Layout::Genai,
        ..Default::default()
    };
    genai_matches_transformers(&options, &["generation/tiny-trained.json", "generation/tiny-trained-long.json"]);
}

fn genai_matches_transformers(options: &ExportOptions, trained_fixtures: &[&str]) {
    let Some(python) = python_with("onnxruntime_genai") else { return };
    let options = options.clone();
    let share = options.graph.precision.kv_cache == KvCache::Shared;
    let (_tmp, out) = export_fixture("tiny-default", &options);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("genai_config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["type"], "decoder");
    assert_eq!(config["search"]["past_present_share_buffer"], Value::Bool(share));
    let cases = greedy_cases("generation/tiny-default.json");
    assert!(!cases.is_empty());
    let got = genai_generate(&python, &out, &cases);
    assert_eq!(got.len(), cases.len(), "onnxruntime-genai returned one result per case");
    for ((_, want), got) in cases.iter().zip(&got) {
        assert_eq!(got, want, "onnxruntime-genai on tiny-default");
    }
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    gpt2c_compiler::export(&shared.join("models/tiny-trained"), &out, &options, &mut |_| {}).unwrap();
    let mut cases = Vec::new();
    for file in trained_fixtures {
        let of_file = greedy_cases(file);
        assert!(!of_file.is_empty(), "{file} holds greedy cases");
        cases.extend(of_file);
    }
    let got = genai_generate(&python, &out, &cases);
    assert_eq!(got.len(), cases.len(), "onnxruntime-genai returned one result per case");
    for ((_, want), got) in cases.iter().zip(&got) {
        assert_eq!(got, want, "onnxruntime-genai on tiny-trained");
    }
}

/// The default layout: optimum's `ORTModelForCausalLM.from_pretrained(out)` and its `generate()`
/// give transformers' greedy ids.
#[test]
fn optimum_generates_transformers_greedy_ids() {
    let Some(python) = python_with("optimum.onnxruntime") else { return };
    let run = |dir: &Path, cases: &[(Vec<u64>, Vec<u64>)]| -> Vec<Vec<u64>> {
        let request: Vec<Value> = cases
            .iter()
            .map(|(p, s)| serde_json::json!({ "prompt": p, "max_new_tokens": s.len() - p.len() }))
            .collect();
        let file = dir.join("cases.json");
        std::fs::write(&file, serde_json::to_string(&request).unwrap()).unwrap();
        let out = Command::new(&python)
            .arg(repo_root().join("tests/clients/optimum_generate.py"))
            .arg(dir)
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "optimum: {}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<Vec<u64>> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got.len(), cases.len(), "optimum returned one result per case");
        got
    };
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    let cases = greedy_cases("generation/tiny-default.json");
    for ((_, want), got) in cases.iter().zip(&run(&out, &cases)) {
        assert_eq!(got, want, "optimum on tiny-default");
    }
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    gpt2c_compiler::export(&shared.join("models/tiny-trained"), &out, &ExportOptions::default(), &mut |_| {}).unwrap();
    let cases = greedy_cases("generation/tiny-trained.json");
    for ((_, want), got) in cases.iter().zip(&run(&out, &cases)) {
        assert_eq!(got, want, "optimum on tiny-trained");
    }
}

/// Node and the installed transformers.js client (tests/clients, `npm install` there), if present.
fn transformersjs() -> Option<std::path::PathBuf> {
    let clients = repo_root().join("tests/clients");
    let installed = clients.join("node_modules/@huggingface/transformers/package.json");
    let node = Command::new("node").arg("--version").output();
    let ok = match node {
        Ok(o) if o.status.success() && installed.is_file() => Ok(()),
        Ok(_) => Err(format!("{} missing: run `npm install` in tests/clients", installed.display())),
        Err(e) => Err(format!("node: {e}")),
    };
    gpt2c_tests::available("node with @huggingface/transformers", ok).then_some(clients)
}

/// `--layout transformers.js`: @huggingface/transformers (npm, onnxruntime-node) loads the folder
/// offline (`onnx/model.onnx`; `onnx/model_quantized.onnx` for int8) and its greedy generation gives
/// transformers' ids (int8: runs and keeps the prompt; its ids are int8's own).
#[test]
fn transformersjs_generates_transformers_greedy_ids() {
    let Some(clients) = transformersjs() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let run = |name: &str, dtype: &str, cases: &[(Vec<u64>, Vec<u64>)], src: &Path, precision| -> Vec<Vec<u64>> {
        let graph = gpt2c_compiler::gpt2::GraphOptions { precision, ..Default::default() };
        let options = ExportOptions { layout: Layout::TransformersJs, graph, ..Default::default() };
        gpt2c_compiler::export(src, &models.join(name), &options, &mut |_| {}).unwrap();
        let request: Vec<Value> = cases
            .iter()
            .map(|(p, s)| serde_json::json!({ "prompt": p, "max_new_tokens": s.len() - p.len() }))
            .collect();
        let file = tmp.path().join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_string(&request).unwrap()).unwrap();
        let out = Command::new("node")
            .arg(clients.join("transformersjs_generate.mjs"))
            .args([models.as_os_str(), name.as_ref(), file.as_os_str(), dtype.as_ref()])
            .current_dir(&clients)
            .output()
            .unwrap();
        assert!(out.status.success(), "transformers.js: {}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<Vec<u64>> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got.len(), cases.len(), "transformers.js returned one result per case");
        got
    };
    let cases = greedy_cases("generation/tiny-default.json");
    let fp32 = run("tiny", "fp32", &cases, &fixture("tiny-default"), Default::default());
    for ((_, want), got) in cases.iter().zip(&fp32) {
        assert_eq!(got, want, "transformers.js on tiny-default");
    }
    assert!(models.join("tiny/onnx/model.onnx").is_file());
    let int8 = gpt2c_compiler::gpt2::Precision { quantize: gpt2c_compiler::gpt2::Quantize::Int8, ..Default::default() };
    let q8 = run("tiny-q8", "q8", &cases, &fixture("tiny-default"), int8);
    assert!(models.join("tiny-q8/onnx/model_quantized.onnx").is_file());
    for ((prompt, want), got) in cases.iter().zip(&q8) {
        assert!(got.len() == want.len() && got.starts_with(prompt), "transformers.js int8: {got:?}");
    }
    let Some(shared) = shared_dir() else { return };
    let cases = greedy_cases("generation/tiny-trained.json");
    let got = run("trained", "fp32", &cases, &shared.join("models/tiny-trained"), Default::default());
    for ((_, want), got) in cases.iter().zip(&got) {
        assert_eq!(got, want, "transformers.js on tiny-trained");
    }
}

/// genai needs the cached language model: other tasks are refused before anything is written.
#[test]
fn genai_layout_needs_a_language_model_with_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = gpt2c_compiler::gpt2::GraphOptions {
        task: Some(gpt2c_compiler::gpt2::Task::TextGeneration),
        ..Default::default()
    };
    let options = ExportOptions { layout: Layout::Genai, graph, ..Default::default() };
    let err =
        gpt2c_compiler::export(&fixture("tiny-default"), &tmp.path().join("o"), &options, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("text-generation-with-past"), "{err}");
    assert!(!tmp.path().join("o").exists());
    // A task implied by config.json (GPT2Model: feature-extraction) is refused before any weight
    // is read: here the weights file is not even a safetensors file.
    let ckpt = tmp.path().join("base");
    std::fs::create_dir(&ckpt).unwrap();
    std::fs::copy(repo_root().join("models/heads/base/config.json"), ckpt.join("config.json")).unwrap();
    std::fs::write(ckpt.join("model.safetensors"), b"not weights").unwrap();
    let options = ExportOptions { layout: Layout::Genai, ..Default::default() };
    let err = gpt2c_compiler::export(&ckpt, &tmp.path().join("o"), &options, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--layout genai") && err.to_string().contains("feature-extraction"), "{err}");
    assert!(!tmp.path().join("o").exists());
}
