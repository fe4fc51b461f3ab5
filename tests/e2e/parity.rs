//! Exported graphs compute what transformers' GPT2LMHeadModel computes: logits
//! and every present key/value, for (a) a prompt with an empty past, (b) one
//! more token fed that past, (c) a left-padded batch, on every backend.

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::gpt2::{GraphOptions, KvCache, Precision, Target};
use gpt2c_runtime::{BackendKind, HostTensor};
use gpt2c_tests::{Reference, backends, empty_past, export_fixture, fixture, max_abs_diff, runner};

const TOLERANCE: f32 = 1e-4;

struct Shape {
    n_layer: usize,
    n_head: usize,
    head_dim: usize,
}

fn shape_of(name: &str) -> Shape {
    let text = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
    let c: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n_head = c["n_head"].as_u64().unwrap() as usize;
    Shape {
        n_layer: c["n_layer"].as_u64().unwrap() as usize,
        n_head,
        head_dim: c["n_embd"].as_u64().unwrap() as usize / n_head,
    }
}

/// Runs case `case` (a, b or c) and checks every output; `past` feeds case b.
fn check_case(
    kind: BackendKind,
    run: &mut dyn gpt2c_runtime::GraphRunner,
    reference: &Reference,
    shape: &Shape,
    case: &str,
    past: Vec<(String, HostTensor)>,
    label: &str,
) -> Vec<(String, HostTensor)> {
    let ids = reference.get(&format!("{case}.input_ids"));
    let mask = reference.get(&format!("{case}.attention_mask"));
    let positions = reference.get(&format!("{case}.position_ids"));
    let mut inputs: Vec<(&str, &HostTensor)> =
        vec![("input_ids", ids), ("attention_mask", mask), ("position_ids", positions)];
    inputs.extend(past.iter().map(|(n, t)| (n.as_str(), t)));
    let outputs = run.run(&inputs).unwrap_or_else(|e| panic!("{label} {} case {case}: {e}", kind.name()));

    // Pad positions compute nothing meaningful (transformers' own attention
    // implementations disagree there); compare where attention_mask is 1.
    let mask_values = mask.as_i64().unwrap();
    let total = mask.shape[1];
    let seq = ids.shape[1];
    let query_valid = |b: usize, s: usize| mask_values[b * total + (total - seq) + s] == 1;
    let slot_valid = |b: usize, t: usize| mask_values[b * total + t] == 1;

    let mut presents = Vec::new();
    for (name, got) in outputs {
        if name == "logits" {
            let want = reference.get(&format!("{case}.logits"));
            let d = max_abs_diff(&got, want, Some(&|i: &[usize]| query_valid(i[0], i[1])));
            assert!(d <= TOLERANCE, "{label} {} case {case}: logits differ by {d}", kind.name());
        } else {
            let want = reference.get(&format!("{case}.{name}"));
            let d = max_abs_diff(&got, want, Some(&|i: &[usize]| slot_valid(i[0], i[2])));
            assert!(d <= TOLERANCE, "{label} {} case {case}: {name} differs by {d}", kind.name());
            presents.push((name.replace("present.", "past_key_values."), got));
        }
    }
    assert_eq!(presents.len(), 2 * shape.n_layer, "{label}: every layer's key and value are outputs");
    presents
}

fn check_fixture(name: &str, reference_of: &str) {
    check_fixture_with(name, reference_of, &ExportOptions::default(), &backends());
}

fn check_fixture_with(name: &str, reference_of: &str, options: &ExportOptions, kinds: &[BackendKind]) {
    let shape = shape_of(name);
    let reference = Reference::load(&fixture(reference_of).join("reference.safetensors"));
    let (_tmp, out) = export_fixture(name, options);
    for &kind in kinds {
        let mut run = runner(kind, &out);
        let past = empty_past(shape.n_layer, 1, shape.n_head, shape.head_dim);
        let presents = check_case(kind, run.as_mut(), &reference, &shape, "a", past, name);
        check_case(kind, run.as_mut(), &reference, &shape, "b", presents, name);
        let past = empty_past(shape.n_layer, 2, shape.n_head, shape.head_dim);
        check_case(kind, run.as_mut(), &reference, &shape, "c", past, name);
    }
}

#[test]
fn default_config_matches_transformers() {
    check_fixture("tiny-default", "tiny-default");
}

#[test]
fn n_inner_with_erf_gelu_matches_transformers() {
    check_fixture("tiny-inner-gelu", "tiny-inner-gelu");
}

#[test]
fn inverse_layer_scaling_and_upcast_attention_match_transformers() {
    check_fixture("tiny-scaled-attn", "tiny-scaled-attn");
}

#[test]
fn untied_lm_head_matches_transformers() {
    check_fixture("tiny-untied", "tiny-untied");
}

#[test]
fn float16_weights_match_transformers() {
    check_fixture("tiny-default-f16", "tiny-default-f16");
}

#[test]
fn bfloat16_weights_match_transformers() {
    check_fixture("tiny-default-bf16", "tiny-default-bf16");
}

#[test]
fn sharded_checkpoint_matches_transformers() {
    check_fixture("tiny-default-sharded", "tiny-default");
}

#[test]
fn checkpoint_without_transformer_prefix_matches_transformers() {
    // Saved from GPT2Model (its architectures imply feature-extraction): the tied LM head is wte.
    let graph = GraphOptions { task: Some(gpt2c_compiler::gpt2::Task::TextGenerationWithPast), ..Default::default() };
    check_fixture_with(
        "tiny-base-noprefix",
        "tiny-default",
        &ExportOptions { graph, ..Default::default() },
        &backends(),
    );
}

/// `--target ort` (opset-23 Attention, SkipLayerNormalization, FastGelu; ONNX Runtime only) on every
/// fixture configuration: tanh and erf GELU, inverse-layer scaling, untied head, fp16 weights.
#[test]
fn ort_target_matches_transformers() {
    let kinds = backends();
    let precision = Precision { target: Target::Ort, ..Default::default() };
    let options =
        ExportOptions { graph: GraphOptions { opset: 23, precision, ..Default::default() }, ..Default::default() };
    for name in ["tiny-default", "tiny-inner-gelu", "tiny-scaled-attn", "tiny-untied", "tiny-default-f16"] {
        check_fixture_with(name, name, &options, &kinds);
    }
}

/// `--target ort --kv-cache shared` (GroupQueryAttention fed each row's last position from the
/// mask) computes the same logits and presents as transformers on ONNX Runtime, with caches passed
/// as ordinary growing tensors: a prompt, a decode step after it, and a left-padded batch.
#[test]
fn shared_cache_matches_transformers() {
    let kinds: Vec<BackendKind> = backends().into_iter().filter(|k| *k == BackendKind::Ort).collect();
    let precision = Precision { target: Target::Ort, kv_cache: KvCache::Shared, ..Default::default() };
    let options =
        ExportOptions { graph: GraphOptions { opset: 23, precision, ..Default::default() }, ..Default::default() };
    for name in ["tiny-default", "tiny-inner-gelu", "tiny-scaled-attn", "tiny-untied", "tiny-default-f16"] {
        check_fixture_with(name, name, &options, &kinds);
    }
    let (_tmp, out) = export_fixture("tiny-default", &options);
    let model = gpt2c_proto::decode_model(&std::fs::read(out.join("model.onnx")).unwrap()).unwrap();
    let count = |op: &str| model.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type() == op).count();
    assert_eq!(count("GroupQueryAttention"), shape_of("tiny-default").n_layer);
    assert_eq!(count("Attention"), 0);
    // tract cannot run it, and says so.
    let err = gpt2c_runtime::load_runner(BackendKind::Tract, &out.join("model.onnx"), &Default::default())
        .err()
        .expect("tract refuses GroupQueryAttention");
    assert!(err.to_string().contains("--kv-cache shared"), "{err}");
}

/// The ORT target really is the fused graph: one Attention per layer, SkipLayerNormalization for
/// every LayerNorm after the first (ln_f included), FastGelu only for the tanh GELU family.
#[test]
fn ort_target_uses_fused_kernels() {
    let precision = Precision { target: Target::Ort, ..Default::default() };
    let options =
        ExportOptions { graph: GraphOptions { opset: 23, precision, ..Default::default() }, ..Default::default() };
    for (name, fast_gelu) in [("tiny-default", true), ("tiny-inner-gelu", false)] {
        let n_layer = shape_of(name).n_layer;
        let (_tmp, out) = export_fixture(name, &options);
        let bytes = std::fs::read(out.join("model.onnx")).unwrap();
        let model = gpt2c_proto::decode_model(&bytes).unwrap();
        let count = |op: &str| model.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type() == op).count();
        assert_eq!(count("Attention"), n_layer, "{name}");
        assert_eq!(count("SkipLayerNormalization"), 2 * n_layer, "{name}");
        assert_eq!(count("LayerNormalization"), 1, "{name}: only h.0.ln_1 stays plain");
        assert_eq!(count("Softmax"), 0, "{name}");
        assert_eq!(count("FastGelu"), if fast_gelu { n_layer } else { 0 }, "{name}");
    }
}

/// Specialized for generation, the last layer computes one position: the compiler's markers become
/// Slices, the logits are transformers' last-position logits, and every `present` (the last
/// layer's included) still covers every position. Both targets, every backend, a padded batch.
#[test]
fn last_layer_specialization_keeps_every_present() {
    use gpt2c_runtime::backend::LogitsScope;
    use gpt2c_runtime::specialize::{Edits, LAST_POSITION_MARKERS, specialize};
    assert_eq!(LAST_POSITION_MARKERS, gpt2c_compiler::gpt2::attention::LAST_POSITION_MARKERS);
    let shape = shape_of("tiny-default");
    let reference = Reference::load(&fixture("tiny-default").join("reference.safetensors"));
    let ort = |kv_cache| ExportOptions {
        graph: GraphOptions {
            opset: 23,
            precision: Precision { target: Target::Ort, kv_cache, ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    };
    let separate_queries = ["query_rows", "mask_rows", "residual_rows"];
    let variants = [
        ("portable", ExportOptions::default(), &separate_queries[..]),
        ("ort target", ort(KvCache::Concat), &separate_queries[..]),
        ("shared cache", ort(KvCache::Shared), &["context_rows", "residual_rows"][..]),
    ];
    for (label, options, markers) in variants {
        let (_tmp, out) = export_fixture("tiny-default", &options);
        let bytes = std::fs::read(out.join("model.onnx")).unwrap();
        let edits = Edits { last_position_logits: true, ..Default::default() };
        let model = gpt2c_proto::decode_model(&specialize(&bytes, "model.onnx", edits).unwrap()).unwrap();
        let graph = model.graph.unwrap();
        for (marker, _) in LAST_POSITION_MARKERS {
            let at = format!("h.{}.", shape.n_layer - 1);
            let node = graph.node.iter().find(|n| n.name().ends_with(&format!(".{marker}/Identity")));
            if !markers.contains(&marker) {
                assert!(node.is_none(), "{label}: an unexpected {marker} marker");
                continue;
            }
            let node = node.unwrap_or_else(|| panic!("{label}: no {marker} marker"));
            assert!(node.name().starts_with(&at) && node.op_type() == "Slice", "{label}: {}", node.name());
        }
        let kinds = backends().into_iter().filter(|&k| label != "shared cache" || k == BackendKind::Ort);
        for kind in kinds {
            let options = gpt2c_runtime::RunnerOptions { logits: LogitsScope::Last, ..Default::default() };
            let mut run = gpt2c_runtime::load_runner(kind, &out.join("model.onnx"), &options).unwrap();
            let past = empty_past(shape.n_layer, 2, shape.n_head, shape.head_dim);
            let mut inputs: Vec<(&str, &HostTensor)> = vec![
                ("input_ids", reference.get("c.input_ids")),
                ("attention_mask", reference.get("c.attention_mask")),
                ("position_ids", reference.get("c.position_ids")),
            ];
            inputs.extend(past.iter().map(|(n, t)| (n.as_str(), t)));
            let outputs = run.run(&inputs).unwrap();
            let mask = reference.get("c.attention_mask").as_i64().unwrap().to_vec();
            let total = reference.get("c.attention_mask").shape[1];
            for (name, got) in outputs {
                let want = reference.get(&format!("c.{name}"));
                let d = if name == "logits" {
                    let (rows, seq, vocab) = (want.shape[0], want.shape[1], want.shape[2]);
                    let data = want.as_f32().unwrap();
                    let last: Vec<f32> = (0..rows)
                        .flat_map(|r| data[(r * seq + seq - 1) * vocab..(r * seq + seq) * vocab].to_vec())
                        .collect();
                    max_abs_diff(&got, &HostTensor::f32(vec![rows, 1, vocab], last).unwrap(), None)
                } else {
                    max_abs_diff(&got, want, Some(&|i: &[usize]| mask[i[0] * total + i[2]] == 1))
                };
                assert!(d <= TOLERANCE, "{label} on {}: {name} differs by {d}", kind.name());
            }
        }
    }
}

/// Every supported opset gives the same numbers (LayerNormalization is
/// decomposed before 17, ReduceMean changes form at 18).
#[test]
fn every_opset_matches_transformers() {
    let shape = shape_of("tiny-default");
    let reference = Reference::load(&fixture("tiny-default").join("reference.safetensors"));
    for opset in [14, 16, 17, 18, 21, 23] {
        let options = ExportOptions { graph: GraphOptions { opset, ..Default::default() }, ..Default::default() };
        let (_tmp, out) = export_fixture("tiny-default", &options);
        for kind in backends() {
            let mut run = runner(kind, &out);
            let past = empty_past(shape.n_layer, 2, shape.n_head, shape.head_dim);
            check_case(kind, run.as_mut(), &reference, &shape, "c", past, &format!("opset {opset}"));
        }
    }
}
