//! Every GPT-2 head and activation against transformers (models/heads/, made by
//! models/make_head_fixtures.py): the task is inferred from config.json's
//! `architectures` as optimum does, and each output matches within 1e-4 on
//! every backend.

use std::path::PathBuf;

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::gpt2::{GraphOptions, Task};
use gpt2c_runtime::HostTensor;
use gpt2c_tests::{Reference, backends, max_abs_diff, repo_root, runner};

const TOLERANCE: f32 = 1e-4;

fn head_fixture(name: &str) -> PathBuf {
    repo_root().join("models/heads").join(name)
}

fn export_head(name: &str, task: Option<Task>) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    let options = ExportOptions { graph: GraphOptions { task, ..Default::default() }, ..Default::default() };
    gpt2c_compiler::export(&head_fixture(name), &out, &options, &mut |_| {})
        .unwrap_or_else(|e| panic!("export of {name} failed: {e}"));
    (tmp, out)
}

/// Runs `out` on every backend with the reference's `{prefix}{input}` tensors and compares every
/// output the reference holds; `keep` picks the elements compared (pad positions compute nothing
/// transformers defines).
fn check(
    label: &str,
    out: &std::path::Path,
    reference: &Reference,
    prefix: &str,
    inputs: &[&str],
    extra: &[(String, HostTensor)],
    keep: &dyn Fn(&str, &[usize]) -> bool,
) -> Vec<(String, HostTensor)> {
    let mut last = Vec::new();
    for kind in backends() {
        let mut run = runner(kind, out);
        let mut feed: Vec<(&str, &HostTensor)> =
            inputs.iter().map(|n| (*n, reference.get(&format!("{prefix}{n}")))).collect();
        feed.extend(extra.iter().map(|(n, t)| (n.as_str(), t)));
        let outputs = run.run(&feed).unwrap_or_else(|e| panic!("{label} on {}: {e}", kind.name()));
        let expected: Vec<&String> = reference
            .tensors
            .keys()
            .filter(|k| k.starts_with(prefix) && !inputs.iter().any(|i| **k == format!("{prefix}{i}")))
            .collect();
        assert_eq!(
            outputs.len(),
            expected.len(),
            "{label}: outputs {:?}",
            outputs.iter().map(|o| &o.0).collect::<Vec<_>>()
        );
        for (name, got) in &outputs {
            let want = reference.get(&format!("{prefix}{name}"));
            let d = max_abs_diff(got, want, Some(&|i: &[usize]| keep(name, i)));
            assert!(d <= TOLERANCE, "{label} on {}: {name} differs by {d}", kind.name());
        }
        last = outputs;
    }
    last
}

fn mask_of(reference: &Reference, name: &str) -> (Vec<i64>, Vec<usize>) {
    let t = reference.get(name);
    (t.as_i64().unwrap().to_vec(), t.shape.clone())
}

/// Sequence classification (left, right and no padding), token classification and question
/// answering, exported without --task: the task comes from `architectures`.
#[test]
fn classification_heads_match_transformers() {
    for (name, inputs) in [
        ("seq-cls", ["input_ids", "attention_mask"]),
        ("seq-cls-nopad", ["input_ids", "attention_mask"]),
        ("tok-cls", ["input_ids", "attention_mask"]),
        ("qa", ["input_ids", "attention_mask"]),
    ] {
        let reference = Reference::load(&head_fixture(name).join("reference.safetensors"));
        let (mask, shape) = mask_of(&reference, "attention_mask");
        let (_tmp, out) = export_head(name, None);
        // Per-token outputs ([batch, sequence, ...]) compare where the token is real; sequence
        // classification pools each row into [batch, labels], compared everywhere.
        let pooled = name.starts_with("seq-cls");
        assert_eq!(shape.len(), 2, "{name}: attention_mask is [batch, sequence]");
        let keep = |_: &str, i: &[usize]| pooled || mask[i[0] * shape[1] + i[1]] == 1;
        let outputs = check(name, &out, &reference, "", &inputs, &[], &keep);
        if pooled {
            let labels = reference.get("logits");
            assert_eq!(labels.shape, vec![shape[0], labels.shape[1]], "{name}: pooled logits are [batch, labels]");
            assert!(outputs.iter().any(|(n, t)| n == "logits" && t.shape == labels.shape), "{name}: {outputs:?}");
        }
    }
}

/// Without pad_token_id transformers takes one row at a time; the export declares batch 1 and
/// ONNX Runtime refuses a larger batch, naming the input.
#[test]
fn text_classification_without_pad_token_takes_one_row() {
    let (_tmp, out) = export_head("seq-cls-nopad", None);
    let model = gpt2c_proto::decode_model(&std::fs::read(out.join("model.onnx")).unwrap()).unwrap();
    let input = &model.graph.unwrap().input[0];
    let dims = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(gpt2c_proto::type_proto::Value::TensorType(t)) => t.shape.clone().unwrap().dim,
        _ => panic!("input_ids is a tensor"),
    };
    assert_eq!(dims[0].value, Some(gpt2c_proto::tensor_shape_proto::dimension::Value::DimValue(1)));
    let two = HostTensor::i64(vec![2, 3], vec![1, 2, 3, 4, 5, 6]).unwrap();
    let ones = HostTensor::i64(vec![2, 3], vec![1; 6]).unwrap();
    for kind in backends() {
        let err = runner(kind, &out).run(&[("input_ids", &two), ("attention_mask", &ones)]);
        assert!(err.is_err(), "{}: a batch of two ran", kind.name());
    }
}

/// GPT2DoubleHeadsModel: LM logits over [batch, choices, sequence] and the multiple-choice
/// summary (cls_index with projection to one label; mean with tanh and no label projection; last).
#[test]
fn double_heads_match_transformers() {
    for name in ["double-heads", "double-heads-mean", "double-heads-last"] {
        let reference = Reference::load(&head_fixture(name).join("reference.safetensors"));
        let (mask, shape) = mask_of(&reference, "attention_mask");
        let (_tmp, out) = export_head(name, None);
        let valid = |b: usize, c: usize, s: usize| mask[(b * shape[1] + c) * shape[2] + s] == 1;
        let keep = |output: &str, i: &[usize]| match output {
            "logits" => valid(i[0], i[1], i[2]),
            // mean/last pool over choices at each position: pad positions of any choice are excluded.
            _ if name != "double-heads" => (0..shape[1]).all(|c| valid(i[0], c, i[1])),
            _ => true,
        };
        check(name, &out, &reference, "", &["input_ids", "attention_mask", "mc_token_ids"], &[], &keep);
    }
}

/// GPT2Model: last_hidden_state for a left-padded batch (feature-extraction, inferred), and with
/// past key/values for a prompt then one more token (feature-extraction-with-past).
#[test]
fn base_model_features_match_transformers() {
    let reference = Reference::load(&head_fixture("base").join("reference.safetensors"));
    let (mask, shape) = mask_of(&reference, "p.attention_mask");
    let (_tmp, out) = export_head("base", None);
    let keep = |_: &str, i: &[usize]| mask[i[0] * shape[1] + i[1]] == 1;
    check("base", &out, &reference, "p.", &["input_ids", "attention_mask"], &[], &keep);

    let (_tmp, out) = export_head("base", Some(Task::FeatureExtractionWithPast));
    let inputs = ["input_ids", "attention_mask", "position_ids"];
    let past = gpt2c_tests::empty_past(2, 1, 4, 8);
    let presents = check("base with past", &out, &reference, "q.", &inputs, &past, &|_, _| true);
    let past: Vec<(String, HostTensor)> = presents
        .into_iter()
        .filter(|(n, _)| n.starts_with("present."))
        .map(|(n, t)| (n.replace("present.", "past_key_values."), t))
        .collect();
    check("base with past, one more token", &out, &reference, "r.", &inputs, &past, &|_, _| true);
}

/// scale_attn_weights false, a non-default layer_norm_epsilon, and positions past 1024 (n_positions 2048).
#[test]
fn config_variants_match_transformers() {
    let reference = Reference::load(&head_fixture("variants").join("reference.safetensors"));
    let (_tmp, out) = export_head("variants", Some(Task::TextGeneration));
    check("variants", &out, &reference, "", &["input_ids", "attention_mask", "position_ids"], &[], &|_, _| true);
}

/// Every activation transformers offers a GPT-2 config computes as transformers computes it.
#[test]
fn every_activation_matches_transformers() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_root().join("models/heads")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.starts_with("act-") {
            continue;
        }
        let reference = Reference::load(&head_fixture(&name).join("reference.safetensors"));
        let (_tmp, out) = export_head(&name, Some(Task::TextGeneration));
        check(&name, &out, &reference, "", &["input_ids", "attention_mask", "position_ids"], &[], &|_, _| true);
        seen += 1;
    }
    assert_eq!(seen, gpt2c_compiler::checkpoint::Activation::NAMES.len(), "one fixture per activation name");
}

/// Generation refuses an export of another task, saying how to get one it can run.
#[test]
fn generation_refuses_other_tasks() {
    let (_tmp, out) = export_head("seq-cls", None);
    let model = gpt2c_runtime::ExportedModel::open(&out).unwrap();
    for kind in backends() {
        let err = model.session(kind, &Default::default()).err().expect("refused").to_string();
        assert!(err.contains("text-classification") && err.contains("--task text-generation-with-past"), "{err}");
    }
}

/// Contradictions and unsupported heads get one readable error naming the field or tensor.
#[test]
fn head_errors_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(head_fixture(name).join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(head_fixture(name).join("config.json")).unwrap()).unwrap();
        edit(&mut config);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        dir
    };
    let err_of = |dir: PathBuf, task: Option<Task>| {
        let options = ExportOptions { graph: GraphOptions { task, ..Default::default() }, ..Default::default() };
        gpt2c_compiler::export(&dir, &tmp.path().join("out"), &options, &mut |_| {}).unwrap_err().to_string()
    };
    let dir = copy("seq-cls", &|c| c["architectures"] = serde_json::json!(["BertForMaskedLM"]));
    let e = err_of(dir, None);
    assert!(e.contains("architectures") && e.contains("--task"), "{e}");
    let dir = copy("seq-cls", &|c| {
        c.as_object_mut().unwrap().remove("id2label");
        c["num_labels"] = serde_json::json!(4);
    });
    let e = err_of(dir, None);
    assert!(e.contains("score.weight") && e.contains("[4, 32]"), "{e}");
    let dir = copy("double-heads", &|c| c["summary_type"] = serde_json::json!("attn"));
    let e = err_of(dir, None);
    assert!(e.contains("summary_type") && e.contains("attn"), "{e}");
    // A base model has no classification head to export.
    let dir = copy("base", &|_| {});
    let e = err_of(dir, Some(Task::QuestionAnswering));
    assert!(e.contains("qa_outputs.weight"), "{e}");
    assert!(!tmp.path().join("out").exists(), "nothing written");
}

/// `--random-init` reproduces transformers' initialisation statistically: every tensor's mean and
/// standard deviation agree with those of a fresh transformers model of the same config
/// (models/heads/random-init/init-stats.json) within sampling error (5 standard errors), and
/// constants (biases, LayerNorm) agree exactly.
#[test]
fn random_init_matches_transformers_initialisation() {
    let dir = head_fixture("random-init");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("init-stats.json")).unwrap()).unwrap();
    for (class, task) in
        [("GPT2LMHeadModel", Task::TextGenerationWithPast), ("GPT2ForSequenceClassification", Task::TextClassification)]
    {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("export");
        let options = ExportOptions {
            graph: GraphOptions { task: Some(task), ..Default::default() },
            random_init: Some(7),
            ..Default::default()
        };
        gpt2c_compiler::export(&dir.join("config.json"), &out, &options, &mut |_| {}).unwrap();
        let model = gpt2c_proto::decode_model(&std::fs::read(out.join("model.onnx")).unwrap()).unwrap();
        let graph = model.graph.unwrap();
        let expected = stats["models"][class].as_object().unwrap();
        for (name, want) in expected {
            let stored = if name == "score.weight" { "score.weight_transposed".to_string() } else { name.clone() };
            let tensor = graph
                .initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(stored.as_str()))
                .unwrap_or_else(|| panic!("{class}: no initializer {stored}"));
            let raw = tensor.raw_data.as_ref().unwrap();
            let values: Vec<f64> =
                raw.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
            let n = values.len() as f64;
            assert_eq!(values.len() as u64, want["numel"].as_u64().unwrap(), "{class} {name}");
            let mean = values.iter().sum::<f64>() / n;
            let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            let (want_mean, want_std) = (want["mean"].as_f64().unwrap(), want["std"].as_f64().unwrap());
            if want_std == 0.0 {
                assert!(std == 0.0 && mean == want_mean, "{class} {name}: constant {want_mean}, got {mean} ± {std}");
            } else {
                let se_mean = want_std / n.sqrt();
                assert!(
                    (mean - want_mean).abs() <= 5.0 * se_mean * 2f64.sqrt(),
                    "{class} {name}: mean {mean} vs {want_mean}"
                );
                assert!((std / want_std - 1.0).abs() <= 5.0 / n.sqrt(), "{class} {name}: std {std} vs {want_std}");
            }
        }
    }
}

/// An older checkpoint's `pytorch_model.bin` (PyTorch zip + pickle) exports to the same bytes as the
/// same weights in safetensors.
#[test]
fn pytorch_bin_exports_the_same_bytes_as_safetensors() {
    let (_a, from_safetensors) = gpt2c_tests::export_fixture("tiny-default", &ExportOptions::default());
    let (_b, from_bin) = export_head("tiny-bin", None);
    let (a, b) = (
        std::fs::read(from_safetensors.join("model.onnx")).unwrap(),
        std::fs::read(from_bin.join("model.onnx")).unwrap(),
    );
    assert!(a == b, "model.onnx differs ({} vs {} bytes)", a.len(), b.len());
}

/// A pickle that references anything but tensor reconstruction (here `os.system`, pickled as
/// `posix.system` on Linux, which would
/// create a canary file) is refused, and nothing ran: the canary does not exist.
#[test]
fn a_pickle_that_calls_other_code_is_refused_and_nothing_runs() {
    let canary = std::path::Path::new("/tmp/gpt2c-unpickler-canary");
    let _ = std::fs::remove_file(canary);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let err = gpt2c_compiler::export(&head_fixture("evil-bin"), &out, &ExportOptions::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("pytorch_model.bin") && err.contains(".system`") && err.contains("nothing was run"), "{err}");
    assert!(!canary.exists(), "the pickle's code ran");
    assert!(!out.exists(), "nothing written");
}

/// A GPT-2 with cross-attention (the decoder of encoder-decoder models): encoder states and their
/// mask are inputs; the cross-attention keys and values are computed on the first step and cached
/// (`present.{i}.encoder.*` fed back as `past_key_values.{i}.encoder.*` with empty encoder states).
#[test]
fn cross_attention_matches_transformers_with_its_cache() {
    let reference = Reference::load(&head_fixture("cross").join("reference.safetensors"));
    let (_tmp, out) = export_head("cross", None);
    let empty = |t: usize| HostTensor::f32(vec![2, 4, t, 8], vec![]).unwrap();
    let mut past: Vec<(String, HostTensor)> = Vec::new();
    for i in 0..2 {
        for kind in ["key", "value"] {
            past.push((format!("past_key_values.{i}.{kind}"), empty(0)));
            past.push((format!("past_key_values.{i}.encoder.{kind}"), empty(0)));
        }
    }
    let keep_for = |prefix: &'static str| {
        let (mask, shape) = mask_of(&reference, &format!("{prefix}.attention_mask"));
        move |name: &str, i: &[usize]| {
            let (total, seq) = (shape[1], if prefix == "x" { shape[1] } else { 1 });
            if name == "logits" {
                mask[i[0] * total + (total - seq) + i[1]] == 1
            } else if name.contains("encoder") {
                true
            } else {
                mask[i[0] * total + i[2]] == 1
            }
        }
    };
    let inputs = ["input_ids", "attention_mask", "position_ids", "encoder_hidden_states", "encoder_attention_mask"];
    let presents = check("cross, prompt", &out, &reference, "x.", &inputs, &past, &keep_for("x"));
    let mut next: Vec<(String, HostTensor)> = presents
        .into_iter()
        .filter(|(n, _)| n.starts_with("present."))
        .map(|(n, t)| (n.replace("present.", "past_key_values."), t))
        .collect();
    next.push(("encoder_hidden_states".into(), HostTensor::f32(vec![2, 0, 32], vec![]).unwrap()));
    let inputs = ["input_ids", "attention_mask", "position_ids", "encoder_attention_mask"];
    check("cross, one more token", &out, &reference, "y.", &inputs, &next, &keep_for("y"));

    let err = gpt2c_runtime::ExportedModel::open(&out).unwrap().session(backends()[0], &Default::default());
    let err = err.err().expect("generation refuses a decoder that needs encoder states").to_string();
    assert!(err.contains("add_cross_attention") && err.contains("encoder_hidden_states"), "{err}");
}
