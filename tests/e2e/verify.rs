//! `gpt2c verify` against good and deliberately broken exports: every fixture export and every
//! quantization mode passes with its default tolerance; each kind of damage is caught with the
//! report line a CI log would show.

use std::path::{Path, PathBuf};

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::gpt2::{FloatType, GraphOptions, KvCache, Precision, Quantize, Target};
use gpt2c_compiler::layout::Layout;
use gpt2c_compiler::onnx::ExternalData;
use gpt2c_proto as pb;
use gpt2c_runtime::BackendKind;
use gpt2c_tests::{backends, export_fixture, fixture, repo_root};
use gpt2c_verify::structure::Check;
use gpt2c_verify::{Report, Status, VerifyOptions, verify};

fn options(reference: Option<&Path>, backends: Vec<BackendKind>) -> VerifyOptions {
    VerifyOptions { reference: reference.map(Path::to_path_buf), backends, ..Default::default() }
}

fn run(out: &Path, reference: Option<&Path>) -> Report {
    verify(out, &options(reference, backends())).unwrap_or_else(|e| panic!("verify {}: {e}", out.display()))
}

fn assert_passes(label: &str, report: &Report) {
    let text = report.to_text();
    assert!(report.passed, "{label}:\n{text}");
    // Every structural check ran (none skipped) and every backend compared every case.
    assert!(report.checks.iter().all(|c| c.status == Status::Pass), "{label}:\n{text}");
}

fn export_dir(dir: &Path, options: &ExportOptions) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    gpt2c_compiler::export(dir, &out, options, &mut |_| {}).unwrap_or_else(|e| panic!("export {}: {e}", dir.display()));
    (tmp, out)
}

/// Every checkpoint fixture and head fixture, both targets for the default one: structure,
/// contract, inference and the reference comparison on every backend all pass.
#[test]
fn verify_passes_on_every_fixture_export() {
    let mut dirs: Vec<PathBuf> = [
        "tiny-default",
        "tiny-default-f16",
        "tiny-default-bf16",
        "tiny-default-sharded",
        "tiny-base-noprefix",
        "tiny-inner-gelu",
        "tiny-scaled-attn",
        "tiny-untied",
    ]
    .iter()
    .map(|n| fixture(n))
    .collect();
    let heads = repo_root().join("models/heads");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&heads).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    // evil-bin is refused at load (its own test); random-init holds only a config.
    dirs.extend(
        names
            .into_iter()
            .filter(|p| p.join("config.json").is_file() && !p.ends_with("evil-bin") && !p.ends_with("random-init")),
    );
    for dir in &dirs {
        let (_tmp, out) = export_dir(dir, &ExportOptions::default());
        let report = run(&out, Some(dir));
        assert_passes(&dir.display().to_string(), &report);
        let cases = report.numeric.iter().filter(|n| n.error.is_none()).count();
        assert!(cases >= backends().len(), "{}: {} cases ran", dir.display(), cases);
        eprintln!("{}: {}", dir.display(), report.to_text().lines().rev().nth(1).unwrap_or(""));
    }
    let target_ort = ExportOptions {
        graph: GraphOptions {
            opset: 23,
            precision: Precision { target: Target::Ort, ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    };
    let (_tmp, out) = export_fixture("tiny-default", &target_ort);
    assert_passes("tiny-default --target ort", &run(&out, Some(&fixture("tiny-default"))));
    // GroupQueryAttention runs on ONNX Runtime only.
    let mut shared = target_ort.clone();
    shared.graph.precision.kv_cache = KvCache::Shared;
    let (_tmp, out) = export_fixture("tiny-default", &shared);
    let ort: Vec<BackendKind> = backends().into_iter().filter(|k| *k == BackendKind::Ort).collect();
    let report = verify(&out, &options_for(&fixture("tiny-default"), ort)).unwrap();
    assert_passes("tiny-default --kv-cache shared", &report);
    // The other layouts: verify finds onnx/model.onnx (transformers.js) and its external data.
    for layout in [Layout::Genai, Layout::TransformersJs] {
        let options = ExportOptions { layout, external_data: ExternalData::Always, ..Default::default() };
        let (_tmp, out) = export_fixture("tiny-default", &options);
        assert_passes(&format!("{layout:?}"), &run(&out, Some(&fixture("tiny-default"))));
    }
}

/// Each quantization mode passes with its default tolerance on the backends that run it (tract
/// reads no INT4 tensors, and its MatMulNBits drifts: the int4 modes are checked on ONNX Runtime).
#[test]
fn verify_passes_each_quantization_mode() {
    let mode = |quantize, target, dtype| Precision { quantize, target, dtype, ..Default::default() };
    let modes = [
        ("fp16", mode(Quantize::None, Target::Portable, FloatType::Fp16), 18, false),
        ("int8", mode(Quantize::Int8, Target::Portable, FloatType::Fp32), 18, false),
        ("int8-weights", mode(Quantize::Int8Weights, Target::Portable, FloatType::Fp32), 18, false),
        ("int4-portable", mode(Quantize::Int4, Target::Portable, FloatType::Fp32), 21, true),
        ("int4-ort", mode(Quantize::Int4, Target::Ort, FloatType::Fp32), 23, true),
    ];
    let reference = fixture("tiny-default");
    for (name, precision, opset, ort_only) in modes {
        let options =
            ExportOptions { graph: GraphOptions { opset, precision, ..Default::default() }, ..Default::default() };
        let (_tmp, out) = export_fixture("tiny-default", &options);
        let kinds: Vec<BackendKind> = backends().into_iter().filter(|k| !ort_only || *k == BackendKind::Ort).collect();
        let report = verify(&out, &options_for(&reference, kinds)).unwrap();
        assert_passes(name, &report);
        // The tolerance is the mode's own, and quantization error is really there (not compared away).
        let worst = report.numeric.iter().flat_map(|n| &n.outputs).map(|o| o.max_abs_error).fold(0f32, f32::max);
        eprintln!("{name}: tolerance {:?}, worst abs error {worst}", report.tolerance);
        if !report.numeric.is_empty() {
            assert!(worst > 1e-4, "{name}: a quantized export matches fp32 exactly ({worst})");
        }
    }
}

fn options_for(reference: &Path, kinds: Vec<BackendKind>) -> VerifyOptions {
    options(Some(reference), kinds)
}

/// Decodes `model.onnx` in `out`, applies `edit` and writes it back.
fn damage(out: &Path, edit: impl FnOnce(&mut pb::GraphProto)) {
    let path = out.join("model.onnx");
    let mut model = pb::decode_model(&std::fs::read(&path).unwrap()).unwrap();
    edit(model.graph.as_mut().unwrap());
    std::fs::write(&path, pb::encode_model(&model)).unwrap();
}

fn initializer<'a>(g: &'a mut pb::GraphProto, name: &str) -> &'a mut pb::TensorProto {
    g.initializer.iter_mut().find(|t| t.name() == name).unwrap_or_else(|| panic!("no initializer {name}"))
}

/// Verifies `out` and asserts it fails with a report line starting with `line`.
fn assert_caught(label: &str, out: &Path, reference: Option<&Path>, line: &str) -> Report {
    let report = run(out, reference);
    let text = report.to_text();
    assert!(!report.passed, "{label}: verify passed a broken export:\n{text}");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with(line)),
        "{label}: no line starting with {line:?} in:\n{text}"
    );
    report
}

#[test]
fn verify_catches_a_flipped_weight_sign() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    damage(&out, |g| {
        let t = initializer(g, "h.1.mlp.c_proj.weight");
        for chunk in t.raw_data.as_mut().unwrap().chunks_exact_mut(4) {
            chunk[3] ^= 0x80;
        }
    });
    let kinds = backends();
    let line = format!("FAIL {} prompt logits: max abs error", kinds[0].name());
    let report = assert_caught("flipped sign", &out, Some(&fixture("tiny-default")), &line);
    // Structure is intact: only the numbers give it away, on every backend.
    assert!(report.checks.iter().all(|c| c.status == Status::Pass));
    for kind in kinds {
        let line = format!("FAIL {} prompt logits: max abs error", kind.name());
        assert!(report.to_text().lines().any(|l| l.starts_with(&line)), "{line}");
    }
}

#[test]
fn verify_catches_a_node_input_never_produced() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    let mut label = String::new();
    damage(&out, |g| {
        let (i, n) = g.node.iter_mut().enumerate().find(|(_, n)| n.op_type() == "MatMul").unwrap();
        n.input[0] = "ghost".into();
        label = format!("node {i} \"{}\" (MatMul): input \"ghost\" is never produced", n.name());
    });
    assert_caught("never produced", &out, None, &label);
}

#[test]
fn verify_catches_a_renamed_input() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    damage(&out, |g| {
        g.input.iter_mut().find(|v| v.name() == "position_ids").unwrap().name = Some("positions".into());
        for n in &mut g.node {
            for i in n.input.iter_mut().filter(|i| *i == "position_ids") {
                *i = "positions".into();
            }
        }
    });
    let report = assert_caught("renamed input", &out, None, "input \"position_ids\" is missing (the graph declares");
    assert!(report.to_text().contains("input \"positions\" is not part of the contract"));
}

#[test]
fn verify_catches_a_wrong_dimension_name() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    damage(&out, |g| {
        let logits = g.output.iter_mut().find(|v| v.name() == "logits").unwrap();
        let Some(pb::type_proto::Value::TensorType(t)) = logits.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
            panic!("logits is a tensor")
        };
        t.shape.as_mut().unwrap().dim[1].value =
            Some(pb::tensor_shape_proto::dimension::Value::DimParam("seq_len".into()));
    });
    assert_caught(
        "wrong dim name",
        &out,
        None,
        "output \"logits\" has dims [batch_size, seq_len, 1000], expected [batch_size, sequence_length, 1000]",
    );
}

#[test]
fn verify_catches_an_initializer_whose_dims_disagree_with_its_data() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    damage(&out, |g| initializer(g, "ln_f.bias").dims = vec![33]);
    assert_caught(
        "dims vs data",
        &out,
        None,
        "initializer \"ln_f.bias\": Float dims [33] need 132 raw_data bytes but it holds 128",
    );
}

fn external_export() -> (tempfile::TempDir, PathBuf) {
    let options = ExportOptions { external_data: ExternalData::Always, ..Default::default() };
    export_fixture("tiny-default", &options)
}

#[test]
fn verify_catches_truncated_external_data() {
    let (_tmp, out) = external_export();
    let data = out.join("model.onnx_data");
    let size = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(size - 100).unwrap();
    let report = assert_caught("truncated", &out, Some(&fixture("tiny-default")), "initializer \"");
    let text = report.to_text();
    assert!(text.contains(&format!("lie beyond the file's {} bytes (truncated external data)", size - 100)), "{text}");
    // The backends are not handed a model whose external data failed the check.
    assert!(report.numeric.iter().all(|n| n.error.as_deref().is_some_and(|e| e.contains("not run"))), "{text}");
}

#[test]
fn verify_refuses_external_data_outside_the_folder() {
    let (_tmp, out) = external_export();
    damage(&out, |g| {
        let t = initializer(g, "wte.weight");
        t.external_data.iter_mut().find(|e| e.key() == "location").unwrap().value = Some("../../outside".into());
    });
    assert_caught(
        "outside path",
        &out,
        Some(&fixture("tiny-default")),
        "initializer \"wte.weight\": external data path \"../../outside\" leaves the model's folder",
    );
}

/// `GPT2DoubleHeadsModel` projects its summary to one label whatever config.json says: a
/// double-heads checkpoint whose config has no `id2label` (so `num_labels` defaults to 2) exports and
/// matches the reference.
#[test]
fn double_heads_project_to_one_label_without_id2label() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    let src = repo_root().join("models/heads/double-heads");
    std::fs::copy(src.join("model.safetensors"), ckpt.join("model.safetensors")).unwrap();
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    assert!(config.remove("id2label").is_some() && config.remove("label2id").is_some());
    std::fs::write(ckpt.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let (_out_tmp, out) = export_dir(&ckpt, &ExportOptions::default());
    assert_passes("double heads without id2label", &run(&out, Some(&ckpt)));
}

/// An export whose graph generates: the search node's own inputs and outputs, and its decoder
/// subgraph checked as a model of its own (structure, ONNX Runtime's GPT-2 subgraph contract,
/// inference) and run on each backend against the reference; damage to the decoder is caught.
#[test]
fn verify_checks_an_in_graph_search_export() {
    use gpt2c_compiler::gpt2::search::{Generation, SearchOverrides};
    let greedy = ExportOptions { generation: Some(Generation::Greedy), ..Default::default() };
    let beam =
        ExportOptions { generation: Some(Generation::Beam), external_data: ExternalData::Always, ..Default::default() };
    let triton = ExportOptions {
        generation: Some(Generation::Greedy),
        search: SearchOverrides { max_new_tokens: Some(4), ..Default::default() },
        layout: Layout::Triton,
        triton_name: Some("m".into()),
        ..Default::default()
    };
    for (label, options, model) in
        [("greedy", &greedy, "model.onnx"), ("beam", &beam, "model.onnx"), ("triton", &triton, "m/1/model.onnx")]
    {
        let (_tmp, out) = export_fixture("tiny-default", options);
        let report = run(&out.join(model), Some(&fixture("tiny-default")));
        assert_passes(label, &report);
        assert!(report.checks.iter().any(|c| c.check == Check::Decoder), "{label}: the decoder was checked");
        let cases = report.numeric.iter().filter(|n| n.error.is_none() && n.passed).count();
        assert_eq!(cases, 3 * backends().len(), "{label}: prompt, padded batch and decode step on each backend");
    }
    // A decoder input renamed: the decoder's contract fails (the outer graph is untouched).
    let (_tmp, out) = export_fixture("tiny-default", &greedy);
    damage(&out, |g| {
        let node = g.node.iter_mut().find(|n| n.op_type() == "GreedySearch").unwrap();
        let decoder = node.attribute.iter_mut().find(|a| a.name() == "decoder").unwrap().g.as_mut().unwrap();
        let input = decoder.input.iter_mut().find(|i| i.name() == "position_ids").unwrap();
        input.name = Some("positions".into());
        for n in decoder.node.iter_mut() {
            for i in n.input.iter_mut() {
                if i == "position_ids" {
                    *i = "positions".into();
                }
            }
        }
    });
    let report = run(&out, None);
    assert!(!report.passed);
    let decoder = report.checks.iter().find(|c| c.check == Check::Decoder).unwrap();
    assert_eq!(decoder.status, Status::Fail, "{}", report.to_text());
    assert!(
        decoder.findings.iter().any(|f| f.contains("decoder contract") && f.contains("position_ids")),
        "{:?}",
        decoder.findings
    );
}
