//! Written models pass the reference checker: `onnx.checker.check_model(path,
//! full_check=True)` from the `onnx` Python package (structure, types, and
//! shape inference against the declared inputs and outputs).

use std::path::Path;
use std::process::Command;

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::gpt2::GraphOptions;
use gpt2c_compiler::onnx::ExternalData;
use gpt2c_tests::{export_fixture, python_with_onnx};

fn check(python: &Path, model: &Path) {
    let script = "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True); print(onnx.__version__)";
    let out = Command::new(python).args(["-c", script]).arg(model).output().unwrap();
    assert!(
        out.status.success(),
        "onnx.checker rejected {}:\n{}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_fixture_passes_the_full_check() {
    let Some(python) = python_with_onnx() else {
        return;
    };
    for name in ["tiny-default", "tiny-inner-gelu", "tiny-scaled-attn", "tiny-default-f16", "tiny-base-noprefix"] {
        let (_tmp, out) = export_fixture(name, &ExportOptions::default());
        check(&python, &out.join("model.onnx"));
    }
}

/// Every task's graph, at the default opset and at 14 (attribute forms of the reductions).
#[test]
fn every_task_passes_the_full_check() {
    use gpt2c_compiler::gpt2::Task;
    let Some(python) = python_with_onnx() else {
        return;
    };
    let heads = gpt2c_tests::repo_root().join("models/heads");
    let cases = [
        ("seq-cls", None),
        ("tok-cls", None),
        ("qa", None),
        ("double-heads", None),
        ("double-heads-mean", None),
        ("base", None),
        ("base", Some(Task::FeatureExtractionWithPast)),
        ("base", Some(Task::TextGeneration)),
        ("cross", None),
        ("cross", Some(Task::FeatureExtraction)),
    ];
    for (name, task) in cases {
        for opset in [14, 18] {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("export");
            let options =
                ExportOptions { graph: GraphOptions { opset, task, ..Default::default() }, ..Default::default() };
            gpt2c_compiler::export(&heads.join(name), &out, &options, &mut |_| {}).unwrap();
            check(&python, &out.join("model.onnx"));
        }
    }
}

#[test]
fn external_data_and_every_opset_pass_the_full_check() {
    let Some(python) = python_with_onnx() else {
        return;
    };
    let options = ExportOptions { external_data: ExternalData::Always, ..Default::default() };
    let (_tmp, out) = export_fixture("tiny-default", &options);
    check(&python, &out.join("model.onnx"));
    for opset in [14, 16, 17, 21, 23] {
        let options = ExportOptions { graph: GraphOptions { opset, ..Default::default() }, ..Default::default() };
        let (_tmp, out) = export_fixture("tiny-scaled-attn", &options);
        check(&python, &out.join("model.onnx"));
    }
}

/// The in-graph search models (the decoder as a subgraph whose weights live in the outer graph,
/// external data included), the shared-cache graph and the Triton repository's model.
#[test]
fn search_and_shared_cache_exports_pass_the_full_check() {
    use gpt2c_compiler::gpt2::search::{Generation, SearchOverrides};
    use gpt2c_compiler::gpt2::{KvCache, Precision, Target};
    let Some(python) = python_with_onnx() else {
        return;
    };
    let sampling = SearchOverrides { top_k: Some(0), ..Default::default() };
    for (generation, search, external) in [
        (Generation::Greedy, SearchOverrides::default(), ExternalData::Auto),
        (Generation::Beam, SearchOverrides::default(), ExternalData::Always),
        (Generation::Sampling, sampling, ExternalData::Auto),
    ] {
        let options =
            ExportOptions { generation: Some(generation), search, external_data: external, ..Default::default() };
        let (_tmp, out) = export_fixture("tiny-default", &options);
        check(&python, &out.join("model.onnx"));
    }
    let triton = ExportOptions {
        generation: Some(Generation::Greedy),
        search: SearchOverrides { max_new_tokens: Some(8), ..Default::default() },
        layout: gpt2c_compiler::layout::Layout::Triton,
        triton_name: Some("m".into()),
        ..Default::default()
    };
    let (_tmp, out) = export_fixture("tiny-default", &triton);
    check(&python, &out.join("m/1/model.onnx"));
    let precision = Precision { target: Target::Ort, kv_cache: KvCache::Shared, ..Default::default() };
    let shared =
        ExportOptions { graph: GraphOptions { opset: 23, precision, ..Default::default() }, ..Default::default() };
    let (_tmp, out) = export_fixture("tiny-default", &shared);
    check(&python, &out.join("model.onnx"));
}
