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
use gpt2c_compiler::gpt2::{
    FloatType, GraphOptions, Int4Activations, Part, Precision, Quantize, Target, single_linear_graph,
};
use gpt2c_compiler::onnx::{ModelMeta, encode_inline};
use gpt2c_proto as pb;
use gpt2c_runtime::generate::GenerationConfig;
use gpt2c_runtime::perplexity::perplexity;
use gpt2c_runtime::{BackendKind, ExportedModel, GraphOptimization, HostTensor, RunnerOptions, generate, load_runner};
use gpt2c_tests::{backends, empty_past, export_fixture, fixture, max_abs_diff, python_with_onnx, shared_dir};

fn mode(quantize: Quantize, target: Target) -> Precision {
    Precision { quantize, target, ..Default::default() }
}

fn int4_float_activations() -> Precision {
    Precision { int4_activations: Some(Int4Activations::Float), ..mode(Quantize::Int4, Target::Ort) }
}

fn fp16(io: FloatType) -> Precision {
    Precision { dtype: FloatType::Fp16, io_dtype: io, ..Default::default() }
}

/// Every mode with its name, the opset it needs, and the largest logit difference allowed against fp32
/// on the tiny-default fixture (logits span about ±6). int4 on these random weights moves logits by
/// as much as they span, so no difference to fp32 bounds it: it is held to the model with its
/// weights dequantized (`int4_computes_its_dequantized_weights`) and to a perplexity cost.
fn modes() -> Vec<(&'static str, Precision, i64, Option<f32>)> {
    vec![
        ("fp16", fp16(FloatType::Fp32), 18, Some(0.05)),
        ("fp16-io16", fp16(FloatType::Fp16), 18, Some(0.05)),
        ("int8", mode(Quantize::Int8, Target::Portable), 18, Some(0.6)),
        ("int8-weights", mode(Quantize::Int8Weights, Target::Portable), 18, Some(0.4)),
        ("int4-ort", mode(Quantize::Int4, Target::Ort), 23, None),
        ("int4-portable", mode(Quantize::Int4, Target::Portable), 21, None),
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
    // x @ dequantized int4 weights + b, exactly (f64 sums).
    let int4_product = |x: &[f32]| -> Vec<f32> {
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
    let int8_blocks = |x: &[f32]| -> Vec<f32> {
        x.chunks(32)
            .flat_map(|blk| {
                let scale = blk.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                blk.iter().map(move |v| (v / scale).round_ties_even() * scale)
            })
            .collect()
    };
    let tmp = tempfile::tempdir().unwrap();
    for (name, precision, opset) in [
        ("int8", mode(Quantize::Int8, Target::Portable), 18),
        ("int8-weights", mode(Quantize::Int8Weights, Target::Portable), 18),
        ("int4-ort", int4_float_activations(), 18),
        ("int4-ort-int8-activations", mode(Quantize::Int4, Target::Ort), 18),
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
            // The dynamic form feeds MatMulInteger uint8 (q + 128, zero point 128): the uint8 ×
            // int8 kernels of x86 CPUs without VNNI saturate on 8-bit weights.
            let (dtype, offset) = if name == "int8" { (pb::DataType::Uint8, 128) } else { (pb::DataType::Int8, 0) };
            assert_eq!(stored.data_type, Some(dtype as i32), "{name}: stored type");
            let stored: Vec<i32> = stored
                .raw_data
                .as_ref()
                .unwrap()
                .iter()
                .map(|&b| if offset == 0 { i32::from(b as i8) } else { i32::from(b) - offset })
                .collect();
            assert_eq!(stored, q8.iter().map(|&q| i32::from(q)).collect::<Vec<_>>(), "{name}: int8 values");
            if name == "int8" {
                let zp = initializer(&model, "layer.weight_zero_point").raw_data.clone().unwrap();
                assert_eq!(zp, vec![128u8; n], "{name}: zero points");
            }
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
            if name.starts_with("int4-ort") {
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
            // int8 activations: each row's blocks of 32 quantized symmetrically at run time
            // (scale = max |x| / 127, round half to even), as MatMulNBits' accuracy_level 4 does.
            if name == "int4-ort-int8-activations" { int4_product(&int8_blocks(&x)) } else { int4_product(&x) }
        };
        for kind in backends() {
            if kind == BackendKind::Tract && name == "int4-portable" {
                continue; // tract cannot load INT4 (asserted in every_mode_exports_checks_and_runs)
            }
            let got = run_linear(kind, &path, &x, rows, k);
            // tract runs MatMulNBits as its own Q4_0 kernel, whatever accuracy_level says.
            let want = if kind == BackendKind::Tract && name.starts_with("int4-ort") {
                int4_product(&x)
            } else {
                expected.clone()
            };
            assert_eq!(got.len(), want.len(), "{name} on {}", kind.name());
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0f32, f32::max);
            // (and quantizes the activations to 8 bits its own way).
            let allowed = if kind == BackendKind::Tract && name.starts_with("int4-ort") { 5e-3 } else { 2e-5 };
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
        let weights = integer_matmul_weight_types(&dir.join("model.onnx"));
        if precision.quantize == Quantize::Int8 {
            assert!(!weights.is_empty(), "{name}: no MatMulInteger");
        }
        // ONNX Runtime's uint8 × int8 kernels on x86 CPUs without VNNI saturate 16-bit pair sums
        // (this suite failed on such a CI machine with int8 weights): every integer matmul's
        // weight is uint8.
        assert!(weights.iter().all(|(_, t)| *t == pb::DataType::Uint8 as i32), "{name}: {weights:?}");
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
            if let Some(tolerance) = tolerance {
                assert!(
                    d <= tolerance,
                    "{name} on {}: logits differ from fp32 by {d} (allowed {tolerance})",
                    kind.name()
                );
            }
            let spread = got.as_f32().unwrap().iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                spread > 1.0 && d.is_finite(),
                "{name} on {}: logits are degenerate (max |logit| {spread})",
                kind.name()
            );
            // The decoding session (its cache in the graph's float type) generates through the mode too.
            let model = ExportedModel::open(&dir).unwrap();
            let limits = model.config.limits();
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

/// `(weight name, data type)` of the B input of every `MatMulInteger` in the model.
fn integer_matmul_weight_types(path: &Path) -> Vec<(String, i32)> {
    let model = pb::decode_model(&std::fs::read(path).unwrap()).unwrap();
    let graph = model.graph.as_ref().unwrap();
    graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("MatMulInteger"))
        .map(|n| {
            let b = &n.input[1];
            let t = graph.initializer.iter().find(|t| t.name.as_ref() == Some(b));
            (b.clone(), t.and_then(|t| t.data_type).unwrap_or(-1))
        })
        .collect()
}

/// `accuracy_level` of every `MatMulNBits` in the model (0 when unset, as ONNX Runtime reads it).
fn nbits_accuracy_levels(path: &Path) -> Vec<i64> {
    let model = pb::decode_model(&std::fs::read(path).unwrap()).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let level = |n: &pb::NodeProto| {
        n.attribute.iter().find(|a| a.name.as_deref() == Some("accuracy_level")).and_then(|a| a.i).unwrap_or(0)
    };
    graph.node.iter().filter(|n| n.op_type.as_deref() == Some("MatMulNBits")).map(level).collect()
}

/// int4 under --target ort multiplies int8 activations unless told otherwise: ONNX Runtime's
/// integer kernels, several times faster than its float path on x86.
#[test]
fn int4_activations_choose_the_accuracy_level() {
    // tiny-default: 2 layers × (c_attn, attn c_proj, c_fc, mlp c_proj), and the LM head.
    let expected_nodes = 4 * 2 + 1;
    for (precision, level) in [(mode(Quantize::Int4, Target::Ort), 4), (int4_float_activations(), 0)] {
        let options = ExportOptions {
            graph: GraphOptions { opset: 23, precision: precision.clone(), ..Default::default() },
            ..Default::default()
        };
        let (_tmp, dir) = export_fixture("tiny-default", &options);
        let levels = nbits_accuracy_levels(&dir.join("model.onnx"));
        assert_eq!(levels, vec![level; expected_nodes], "{}", precision.describe());
    }
}

/// A `[k, n]` weight quantized to 4 bits in blocks of 32 along K and dequantized, from the format's
/// definition: the block's value of largest magnitude `m` gives the scale `m / -8`, values are
/// `clamp(round_half_even(w / scale), -8, 7) × scale`.
fn int4_dequantized(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; k * n];
    for start in (0..k).step_by(32) {
        let rows = start..(start + 32).min(k);
        for c in 0..n {
            let m = rows.clone().map(|r| w[r * n + c]).fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let scale = m / -8.0;
            for r in rows.clone() {
                let q = if scale == 0.0 { 0.0 } else { (w[r * n + c] / scale).round_ties_even().clamp(-8.0, 7.0) };
                out[r * n + c] = q * scale;
            }
        }
    }
    out
}

/// A `[rows, cols]` table quantized to int8 with one scale and zero point per row and dequantized:
/// the row's range widened to include 0, `scale = (max - min) / 255`, `zero_point = round(-min /
/// scale) - 128`, `q = clamp(round(w / scale) + zero_point, -128, 127)`, value `(q - zero_point) × scale`.
fn int8_rows_dequantized(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let (min, max) = row.iter().fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let scale = if max > min { (max - min) / 255.0 } else { 1.0 };
        let zp = ((-min / scale).round_ties_even() - 128.0).clamp(-128.0, 127.0);
        out.extend(
            row.iter().map(|&x| ((x / scale).round_ties_even() + zp).clamp(-128.0, 127.0) - zp).map(|q| q * scale),
        );
    }
    out
}

/// `models/tiny-default` with every block linear weight replaced by its dequantized int4 values and
/// the token embedding by its dequantized int8 rows; the LM head keeps the original table (untied).
fn dequantized_checkpoint(dir: &Path) {
    let src = fixture("tiny-default");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json"] {
        if src.join(f).is_file() {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["tie_word_embeddings"] = serde_json::json!(false);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut changed = 0;
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let shape = view.shape().to_vec();
        let w: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let linear = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"];
        if linear.iter().any(|l| name.ends_with(l)) {
            tensors.push((name.clone(), shape.clone(), int4_dequantized(&w, shape[0], shape[1])));
            changed += 1;
        } else if name.ends_with("wte.weight") {
            tensors.push(("lm_head.weight".into(), shape.clone(), w.clone()));
            tensors.push((name.clone(), shape.clone(), int8_rows_dequantized(&w, shape[0], shape[1])));
            changed += 1;
        } else {
            tensors.push((name.clone(), shape, w));
        }
    }
    assert_eq!(changed, 2 * 4 + 1, "tiny-default has 2 layers of 4 linears and one embedding");
    let data: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Logits for the fixture's padded batch on ONNX Runtime with semantics-preserving rewrites only (its
/// extended optimizer would turn DequantizeLinear → MatMul into a MatMulNBits that quantizes the
/// activations).
fn exact_logits(dir: &Path) -> HostTensor {
    let reference = gpt2c_tests::Reference::load(&fixture("tiny-default").join("reference.safetensors"));
    let options = RunnerOptions { optimization: GraphOptimization::Basic, ..Default::default() };
    let mut r = load_runner(BackendKind::Ort, &dir.join("model.onnx"), &options).unwrap();
    let past = empty_past(2, 2, 4, 8);
    let mut inputs = vec![
        ("input_ids", reference.get("c.input_ids")),
        ("attention_mask", reference.get("c.attention_mask")),
        ("position_ids", reference.get("c.position_ids")),
    ];
    inputs.extend(past.iter().map(|(n, t)| (n.as_str(), t)));
    r.run(&inputs).unwrap().swap_remove(0).1
}

/// int4 with float activations (`MatMulNBits` at accuracy_level 0 on the ORT target; blocked
/// DequantizeLinear on the portable graph) computes what the same model computes with its block
/// weights replaced by their dequantized int4 values and its embedding by its dequantized int8 rows:
/// within 1e-4 on logits spanning ±6, while it differs from the fp32 model by far more. The LM head
/// is skipped here because int4 runs it as the int8 dynamic matmul, which quantizes activations
/// (held to the perplexity bound with the rest of the default int4 mode).
#[test]
fn int4_computes_its_dequantized_weights() {
    if !backends().contains(&BackendKind::Ort) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("dequantized");
    dequantized_checkpoint(&ckpt);
    let reference = tmp.path().join("reference");
    gpt2c_compiler::export(&ckpt, &reference, &ExportOptions::default(), &mut |_| {}).unwrap();
    let want = exact_logits(&reference);
    let (_t, fp32) = export_fixture("tiny-default", &ExportOptions::default());
    let original = exact_logits(&fp32);
    let reference_inputs = gpt2c_tests::Reference::load(&fixture("tiny-default").join("reference.safetensors"));
    let mask = reference_inputs.get("c.attention_mask").as_i64().unwrap().to_vec();
    let valid = move |i: &[usize]| mask[i[0] * 7 + i[1]] == 1;
    for (name, target, opset) in [("int4-ort", Target::Ort, 23), ("int4-portable", Target::Portable, 21)] {
        // Float activations: int8 activations (the --target ort default) are held to perplexity.
        let int4_activations = (target == Target::Ort).then_some(Int4Activations::Float);
        let precision = Precision {
            quantize: Quantize::Int4,
            target,
            skip: vec![Part::LmHead],
            int4_activations,
            ..Default::default()
        };
        let options =
            ExportOptions { graph: GraphOptions { opset, precision, ..Default::default() }, ..Default::default() };
        let (_tmp, dir) = export_fixture("tiny-default", &options);
        let got = exact_logits(&dir);
        let d = max_abs_diff(&got, &want, Some(&valid));
        let moved = max_abs_diff(&got, &original, Some(&valid));
        eprintln!("{name}: max |logit - dequantized model's| = {d:.2e}; vs fp32 {moved:.3}");
        assert!(d <= 1e-4, "{name}: differs from the dequantized model by {d}");
        assert!(moved > 0.05, "{name}: no quantization error at all ({moved}): the comparison proves nothing");
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

/// What each mode costs in perplexity over fp32, on a model that has learned its domain:
/// `../shared/models/vim-small` (held-out perplexity ~18; tiny-trained's is in the hundreds, where
/// every mode costs under 1%) over the first 4,096 tokens of its held-out text: at most +0.1% for
/// fp16, +0.5% for int8-weights, +1.5% for int8 and +5% for int4 (both forms, with ONNX Runtime's
/// default optimizations, as a user runs them).
#[test]
fn perplexity_cost_of_each_mode_is_within_bounds() {
    let Some(shared) = shared_dir() else { return };
    let model_dir = shared.join("models/vim-small");
    let text = std::fs::read_to_string(model_dir.join("heldout.txt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ppl = |name: &str, precision: Precision, opset: i64| -> f64 {
        let out = tmp.path().join(name);
        let options =
            ExportOptions { graph: GraphOptions { opset, precision, ..Default::default() }, ..Default::default() };
        gpt2c_compiler::export(&model_dir, &out, &options, &mut |_| {}).unwrap();
        let model = ExportedModel::open(&out).unwrap();
        let ids: Vec<u32> = model.tokenizer().unwrap().encode(&text).unwrap().into_iter().take(4096).collect();
        assert_eq!(ids.len(), 4096, "held-out text too short");
        let kind = *backends().first().unwrap();
        let mut session = model.session(kind, &RunnerOptions::default()).unwrap();
        perplexity(session.as_mut(), &ids, 256, 128, model.config.n_positions, &mut |_, _| {}).unwrap().perplexity
    };
    let base = ppl("fp32", Precision::default(), 18);
    assert!(base > 5.0 && base < 40.0, "vim-small's fp32 perplexity {base} is not the trained model's");
    for (name, precision, opset, bound) in [
        ("fp16", fp16(FloatType::Fp32), 18, 0.001),
        ("int8-weights", mode(Quantize::Int8Weights, Target::Portable), 18, 0.005),
        ("int8", mode(Quantize::Int8, Target::Portable), 18, 0.015),
        ("int4-ort", mode(Quantize::Int4, Target::Ort), 23, 0.05),
        ("int4-ort-float", int4_float_activations(), 23, 0.05),
        ("int4-portable", mode(Quantize::Int4, Target::Portable), 21, 0.05),
    ] {
        let p = ppl(name, precision, opset);
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
        (
            Precision { int4_activations: Some(Int4Activations::Float), ..mode(Quantize::Int4, Target::Portable) },
            21,
            "--int4-activations applies to --quantize int4 with --target ort",
        ),
        (
            Precision { int4_activations: Some(Int4Activations::Int8), ..mode(Quantize::Int8, Target::Ort) },
            23,
            "--int4-activations applies to --quantize int4 with --target ort",
        ),
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
