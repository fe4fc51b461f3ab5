//! Precision modes: fp16, int8 (dynamic), int8-weights, int4 (MatMulNBits and
//! blocked DequantizeLinear).
//!
//! - Quantized matmuls against a direct computation written here from the
//!   formats' definitions: the stored integers and scales are exactly the
//!   expected ones, and the runtimes' outputs match the arithmetic.
//! - Every mode exports, passes `onnx.checker` (full check), and runs on ONNX
//!   Runtime and tract close to the fp32 export. tract 0.23 cannot load the
//!   portable int4 form (it has no INT4 tensors or blocked DequantizeLinear):
//!   the test asserts that refusal, so a tract that learns it will be noticed.
//! - `gpt2c perplexity`'s computation matches transformers', and each mode's
//!   perplexity on held-out text stays within the bounds of the precision issue.

use std::path::Path;
use std::process::Command;

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::gpt2::{FloatType, GraphOptions, Precision, Quantize, Target, single_linear_graph};
use gpt2c_compiler::onnx::{ModelMeta, encode_inline};
use gpt2c_proto as pb;
use gpt2c_runtime::generate::GenerationConfig;
use gpt2c_runtime::perplexity::perplexity;
use gpt2c_runtime::{
    BackendKind, ExportedModel, GraphOptimization, HostTensor, ModelLimits, RunnerOptions, generate, load_runner,
};
use gpt2c_tests::{backends, empty_past, export_fixture, fixture, max_abs_diff, python_with_onnx, shared_dir};

fn mode(quantize: Quantize, target: Target) -> Precision {
    Precision { quantize, target, ..Default::default() }
}

fn fp16(io: FloatType) -> Precision {
    Precision { dtype: FloatType::Fp16, io_dtype: io, ..Default::default() }
}

/// Every mode with its name, the opset it needs, and the largest logit difference allowed against fp32
/// on the tiny-default fixture (logits span about ±6).
fn modes() -> Vec<(&'static str, Precision, i64, f32)> {
    vec![
        ("fp16", fp16(FloatType::Fp32), 18, 0.05),
        ("fp16-io16", fp16(FloatType::Fp16), 18, 0.05),
        ("int8", mode(Quantize::Int8, Target::Portable), 18, 0.6),
        ("int8-weights", mode(Quantize::Int8Weights, Target::Portable), 18, 0.4),
        ("int4-ort", mode(Quantize::Int4, Target::Ort), 23, 9.0),
        ("int4-portable", mode(Quantize::Int4, Target::Portable), 21, 9.0),
    ]
}

/// A small deterministic pseudo-random matrix.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

fn initializer<'a>(model: &'a pb::ModelProto, name: &str) -> &'a pb::TensorProto {
    let g = model.graph.as_ref().unwrap();
    g.initializer.iter().find(|t| t.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no initializer {name}"))
}

fn raw_f32(t: &pb::TensorProto) -> Vec<f32> {
    t.raw_data.as_ref().unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Runs the single-linear graph on a backend, with only semantics-preserving graph rewrites.
fn run_linear(kind: BackendKind, path: &Path, x: &[f32], rows: usize, k: usize) -> Vec<f32> {
    let options = RunnerOptions { optimization: GraphOptimization::Basic, ..Default::default() };
    let mut r = load_runner(kind, path, &options).unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
    let xt = HostTensor::f32(vec![1, rows, k], x.to_vec()).unwrap();
    let out = r.run(&[("x", &xt)]).unwrap();
    out[0].1.as_f32().unwrap().to_vec()
}

/// ONNX's DynamicQuantizeLinear, from the operator specification.
fn dynamic_quantize(x: &[f32]) -> (Vec<i32>, f32, i32) {
    let max = x.iter().fold(0f32, |m, &v| m.max(v));
    let min = x.iter().fold(0f32, |m, &v| m.min(v));
    let scale = (max - min) / 255.0;
    let zp = (-min / scale).round_ties_even().clamp(0.0, 255.0) as i32;
    let q = x.iter().map(|&v| ((v / scale).round_ties_even() + zp as f32).clamp(0.0, 255.0) as i32).collect();
    (q, scale, zp)
}

#[test]
fn quantized_matmuls_match_a_direct_computation() {
    let (k, n, rows) = (64, 24, 5);
    let w = values(k * n, 7, 0.5);
    let bias = values(n, 8, 0.1);
    let x = values(rows * k, 9, 2.0);
    // Expected per-column int8 weights: scale = max |w| / 127, round half to even.
    let scales: Vec<f32> = (0..n).map(|c| (0..k).fold(0f32, |m, r| m.max(w[r * n + c].abs())) / 127.0).collect();
    let q8: Vec<i8> = (0..k * n).map(|i| (w[i] / scales[i % n]).round_ties_even().clamp(-127.0, 127.0) as i8).collect();
    // Expected int4 blocks of 32 along K: the block's largest-magnitude value m maps to -8.
    let mut q4 = vec![0i8; k * n];
    let mut s4 = vec![0f32; (k / 32) * n];
    for blk in 0..k / 32 {
        for c in 0..n {
            let m = (0..32).map(|i| w[(blk * 32 + i) * n + c]).fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            s4[blk * n + c] = m / -8.0;
            for i in 0..32 {
                let r = blk * 32 + i;
                q4[r * n + c] = (w[r * n + c] / s4[blk * n + c]).round_ties_even().clamp(-8.0, 7.0) as i8;
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    for (name, precision, opset) in [
        ("int8", mode(Quantize::Int8, Target::Portable), 18),
        ("int8-weights", mode(Quantize::Int8Weights, Target::Portable), 18),
        ("int4-ort", mode(Quantize::Int4, Target::Ort), 18),
        ("int4-portable", mode(Quantize::Int4, Target::Portable), 21),
    ] {
        let graph = single_linear_graph(&w, &bias, k, n, &precision, opset).unwrap();
        let meta = ModelMeta { doc_string: String::new(), metadata: vec![] };
        let bytes = encode_inline(&graph, &meta).unwrap();
        let model = pb::decode_model(&bytes).unwrap();
        let path = tmp.path().join(format!("{name}.onnx"));
        std::fs::write(&path, &bytes).unwrap();

        // The stored integers and scales are exactly the expected ones.
        let expected: Vec<f32> = if name.starts_with("int8") {
            let stored = initializer(&model, "layer.weight_quantized");
            let stored: Vec<i8> = stored.raw_data.as_ref().unwrap().iter().map(|&b| b as i8).collect();
            assert_eq!(stored, q8, "{name}: int8 values");
            assert_eq!(raw_f32(initializer(&model, "layer.weight_scale")), scales, "{name}: scales");
            // The weight-only form: x @ (q × scale) + b; the dynamic form also quantizes x (one
            // scale and zero point for the whole tensor).
            let (xq, xs, xzp) = dynamic_quantize(&x);
            (0..rows * n)
                .map(|i| {
                    let (row, c) = (i / n, i % n);
                    if name == "int8" {
                        let acc: i32 = (0..k).map(|j| (xq[row * k + j] - xzp) * i32::from(q8[j * n + c])).sum();
                        acc as f32 * (xs * scales[c]) + bias[c]
                    } else {
                        let dot: f64 = (0..k)
                            .map(|j| f64::from(x[row * k + j]) * f64::from(f32::from(q8[j * n + c]) * scales[c]))
                            .sum();
                        dot as f32 + bias[c]
                    }
                })
                .collect()
        } else {
            if name == "int4-ort" {
                let s = raw_f32(initializer(&model, "layer.weight_scales"));
                let s_expected: Vec<f32> =
                    (0..n).flat_map(|c| (0..k / 32).map(move |blk| (blk, c))).map(|(blk, c)| s4[blk * n + c]).collect();
                assert_eq!(s, s_expected, "{name}: scales in MatMulNBits order [N, blocks]");
                let packed = initializer(&model, "layer.weight_q4").raw_data.clone().unwrap();
                // Column c, block 0, first byte: rows 0 and 1, stored + 8, low nibble first.
                for c in 0..n {
                    let byte = packed[c * (k / 2)];
                    assert_eq!((byte & 0xF) as i8 - 8, q4[c], "{name}: column {c} row 0");
                    assert_eq!((byte >> 4) as i8 - 8, q4[n + c], "{name}: column {c} row 1");
                }
            } else {
                assert_eq!(raw_f32(initializer(&model, "layer.weight_scales")), s4, "{name}: scales [blocks, N]");
                let packed = initializer(&model, "layer.weight_int4").raw_data.clone().unwrap();
                let unpacked: Vec<i8> = packed.iter().flat_map(|&b| [((b << 4) as i8) >> 4, (b as i8) >> 4]).collect();
                assert_eq!(unpacked, q4, "{name}: int4 values");
            }
            (0..rows * n)
                .map(|i| {
                    let (row, c) = (i / n, i % n);
                    let dot: f64 = (0..k)
                        .map(|j| f64::from(x[row * k + j]) * f64::from(f32::from(q4[j * n + c]) * s4[(j / 32) * n + c]))
                        .sum();
                    dot as f32 + bias[c]
                })
                .collect()
        };
        for kind in backends() {
            if kind == BackendKind::Tract && name == "int4-portable" {
                continue; // tract cannot load INT4 (asserted in every_mode_exports_checks_and_runs)
            }
            let got = run_linear(kind, &path, &x, rows, k);
            let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0f32, f32::max);
            // tract runs MatMulNBits as its Q4_0 kernel, which also quantizes the activations to 8 bits.
            let allowed = if kind == BackendKind::Tract && name == "int4-ort" { 5e-3 } else { 2e-5 };
            assert!(worst < allowed, "{name} on {}: relative error {worst} (allowed {allowed})", kind.name());
        }
    }
}

fn logits_of(kind: BackendKind, dir: &Path, fp16_io: bool) -> Result<HostTensor, String> {
    let reference = gpt2c_tests::Reference::load(&fixture("tiny-default").join("reference.safetensors"));
    let mut r = gpt2c_runtime::load_runner(kind, &dir.join("model.onnx"), &RunnerOptions::default())
        .map_err(|e| e.to_string())?;
    let mut past = empty_past(2, 2, 4, 8);
    if fp16_io {
        for (_, t) in past.iter_mut() {
            *t = HostTensor::empty(t.shape.clone(), gpt2c_runtime::tensor::ElemType::F16);
        }
    }
    let mut inputs = vec![
        ("input_ids", reference.get("c.input_ids")),
        ("attention_mask", reference.get("c.attention_mask")),
        ("position_ids", reference.get("c.position_ids")),
    ];
    inputs.extend(past.iter().map(|(n, t)| (n.as_str(), t)));
    let out = r.run(&inputs).map_err(|e| e.to_string())?;
    let logits = &out[0].1;
    Ok(HostTensor::f32(logits.shape.clone(), logits.to_f32().unwrap().into_owned()).unwrap())
}

#[test]
fn every_mode_exports_checks_and_runs() {
    let python = python_with_onnx();
    let (_t, fp32) = export_fixture("tiny-default", &ExportOptions::default());
    let fp32_size = std::fs::metadata(fp32.join("model.onnx")).unwrap().len();
    let reference = gpt2c_tests::Reference::load(&fixture("tiny-default").join("reference.safetensors"));
    let mask = reference.get("c.attention_mask").as_i64().unwrap().to_vec();
    let valid = move |i: &[usize]| mask[i[0] * 7 + i[1]] == 1;
    for (name, precision, opset, tolerance) in modes() {
        let options = ExportOptions {
            graph: GraphOptions { opset, precision: precision.clone(), ..Default::default() },
            ..Default::default()
        };
        let (_tmp, dir) = export_fixture("tiny-default", &options);
        let size = std::fs::metadata(dir.join("model.onnx")).unwrap().len();
        assert!(size < fp32_size * 3 / 4, "{name}: {size} bytes vs {fp32_size} for fp32");
        if let Some(python) = &python {
            let script = "import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True)";
            let out = Command::new(python).args(["-c", script]).arg(dir.join("model.onnx")).output().unwrap();
            assert!(out.status.success(), "{name}: onnx.checker: {}", String::from_utf8_lossy(&out.stderr));
        }
        for kind in backends() {
            let fp16_io = precision.io_dtype == FloatType::Fp16;
            if kind == BackendKind::Tract && name == "int4-portable" {
                let err = logits_of(kind, &dir, fp16_io).unwrap_err();
                assert!(err.contains("Int4") || err.contains("blocked"), "tract's refusal changed: {err}");
                continue;
            }
            if kind == BackendKind::Tract && precision.target == Target::Ort {
                // The ORT target is for ONNX Runtime. tract runs its fp32 form exactly (parity tests), but
                // its MatMulNBits inside the fused blocks drifts (max logit error 9.5 vs 2.2 in the portable
                // blocks, tract 0.23), so int4 on tract is the portable export's job.
                continue;
            }
            let want = logits_of(kind, &fp32, false).unwrap();
            let got = logits_of(kind, &dir, fp16_io).unwrap_or_else(|e| panic!("{name} on {}: {e}", kind.name()));
            let d = max_abs_diff(&got, &want, Some(&valid));
            eprintln!("{name} on {}: max |logit - fp32 logit| = {d}", kind.name());
            assert!(d <= tolerance, "{name} on {}: logits differ from fp32 by {d} (allowed {tolerance})", kind.name());
            // The decoding session (its cache in the graph's float type) generates through the mode too.
            let model = ExportedModel::open(&dir).unwrap();
            let limits = ModelLimits { vocab_size: model.config.vocab_size, n_positions: model.config.n_positions };
            let config = GenerationConfig::from_json(
                &model.generation_json,
                &serde_json::Map::from_iter([
                    ("max_new_tokens".to_string(), serde_json::json!(6)),
                    ("num_beams".to_string(), serde_json::json!(2)),
                ]),
            )
            .unwrap();
            let mut session = model.session(kind, &RunnerOptions::default()).unwrap();
            let out = generate(session.as_mut(), limits, &[vec![51, 491, 571]], &config, None, &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{name} on {}: generate: {e}", kind.name()));
            assert_eq!(out.sequences[0].len(), 3 + 6, "{name} on {}", kind.name());
        }
    }
}

/// `gpt2c perplexity`'s windows and arithmetic give transformers' number
/// (models/heldout/reference.json, made by models/heldout/make_heldout.py).
#[test]
fn perplexity_matches_transformers() {
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fp32");
    gpt2c_compiler::export(&shared.join("models/tiny-trained"), &out, &ExportOptions::default(), &mut |_| {}).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("heldout/reference.json")).unwrap()).unwrap();
    let model = ExportedModel::open(&out).unwrap();
    let tokenizer = model.tokenizer().unwrap();
    let text = std::fs::read_to_string(fixture("heldout/tiny-trained-heldout.txt")).unwrap();
    let ids: Vec<u32> =
        tokenizer.encode(&text).unwrap().into_iter().take(reference["tokens"].as_u64().unwrap() as usize).collect();
    for kind in backends() {
        let mut session = model.session(kind, &RunnerOptions::default()).unwrap();
        let p = perplexity(session.as_mut(), &ids, 512, 256, model.config.n_positions, &mut |_, _| {}).unwrap();
        assert_eq!(p.predicted as u64, reference["predicted_tokens"].as_u64().unwrap());
        let want = reference["mean_nll"].as_f64().unwrap();
        assert!((p.mean_nll - want).abs() < 1e-4, "{}: mean NLL {} vs transformers' {want}", kind.name(), p.mean_nll);
    }
}

/// The precision issue's accuracy bounds, on the held-out text's first 2,048 tokens:
/// perplexity over fp32 at most +0.1% for fp16, +1.5% for int8, +0.5% for int8-weights.
#[test]
fn perplexity_cost_of_each_mode_is_within_bounds() {
    let Some(shared) = shared_dir() else { return };
    let text = std::fs::read_to_string(fixture("heldout/tiny-trained-heldout.txt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ppl = |name: &str, precision: Precision| -> f64 {
        let out = tmp.path().join(name);
        let options =
            ExportOptions { graph: GraphOptions { opset: 18, precision, ..Default::default() }, ..Default::default() };
        gpt2c_compiler::export(&shared.join("models/tiny-trained"), &out, &options, &mut |_| {}).unwrap();
        let model = ExportedModel::open(&out).unwrap();
        let ids: Vec<u32> = model.tokenizer().unwrap().encode(&text).unwrap().into_iter().take(2048).collect();
        let kind = *backends().first().unwrap();
        let mut session = model.session(kind, &RunnerOptions::default()).unwrap();
        perplexity(session.as_mut(), &ids, 512, 256, model.config.n_positions, &mut |_, _| {}).unwrap().perplexity
    };
    let base = ppl("fp32", Precision::default());
    for (name, precision, bound) in [
        ("fp16", fp16(FloatType::Fp32), 0.001),
        ("int8", mode(Quantize::Int8, Target::Portable), 0.015),
        ("int8-weights", mode(Quantize::Int8Weights, Target::Portable), 0.005),
    ] {
        let p = ppl(name, precision);
        let increase = p / base - 1.0;
        eprintln!("{name}: perplexity {p:.3} vs fp32 {base:.3} ({:+.3}%)", increase * 100.0);
        assert!(
            increase <= bound,
            "{name}: perplexity rises {:.3}% over fp32 (bound {}%)",
            increase * 100.0,
            bound * 100.0
        );
    }
}

#[test]
fn incompatible_precision_choices_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            Precision { dtype: FloatType::Fp16, quantize: Quantize::Int8, ..Default::default() },
            18,
            "cannot be combined",
        ),
        (Precision { io_dtype: FloatType::Fp16, ..Default::default() }, 18, "needs --dtype fp16"),
        (mode(Quantize::Int4, Target::Portable), 18, "needs opset 21"),
    ];
    for (precision, opset, needle) in cases {
        let options =
            ExportOptions { graph: GraphOptions { opset, precision, ..Default::default() }, ..Default::default() };
        let err = gpt2c_compiler::export(&fixture("tiny-default"), &tmp.path().join("out"), &options, &mut |_| {})
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
        assert!(!tmp.path().join("out").exists());
    }
}
