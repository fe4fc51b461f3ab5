//! `gpt2c verify`'s shape inference on real exports: every format gpt2c writes infers to exactly
//! the outputs it declares, and exports mutated at random (attributes, initializers, dims, wiring,
//! op types) are refused or accepted, never a panic.

use gpt2c_compiler::gpt2::{DEFAULT_OPSET, FloatType, GraphOptions, Part, Precision, Quantize, Target, Task};
use gpt2c_compiler::{ExportOptions, export};
use gpt2c_proto as pb;
use gpt2c_tests::repo_root;
use gpt2c_verify::infer::{declared, infer_graph};

/// Real exports mutated (attributes, initializer values and dims, declared dims, rewired and
/// omitted inputs, dropped nodes, swapped op types) give Ok or a Disagreement, never a panic or
/// an arithmetic overflow.
#[test]
fn mutated_exports_never_panic() {
    let models = repo_root().join("models");
    let tmp = tempfile::tempdir().unwrap();
    let mut graphs = Vec::new();
    for (i, (model, quantize, target, opset)) in [
        ("tiny-default", Quantize::Int8, Target::Portable, 18),
        ("tiny-default", Quantize::Int4, Target::Ort, 23),
        ("tiny-default", Quantize::Int4, Target::Portable, 21),
        ("heads/double-heads-mean", Quantize::None, Target::Portable, 14),
    ]
    .into_iter()
    .enumerate()
    {
        let precision = Precision { quantize, target, ..Default::default() };
        let options = ExportOptions {
            graph: GraphOptions { opset, precision, task: None, ..Default::default() },
            ..Default::default()
        };
        let out = tmp.path().join(format!("m{i}"));
        export(&models.join(model), &out, &options, &mut |_| {}).unwrap();
        let bytes = std::fs::read(out.join("model.onnx")).unwrap();
        graphs.push(gpt2c_proto::decode_model(&bytes).unwrap().graph.unwrap());
    }
    let mut state = 7u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let odd = [0i64, 1, -1, 2, -2, 3, 64, -100, 1 << 40, i32::MAX as i64, i64::MAX, i64::MIN];
    let params = ["a - a", "2*x", "-", "+", "x*y", "9223372036854775807 + a", "a + 9223372036854775807 + 1", ""];
    let (mut ok, mut refused) = (0, 0);
    for round in 0..3000 {
        let mut g = graphs[next() % graphs.len()].clone();
        for _ in 0..1 + next() % 4 {
            let i = next() % g.node.len().max(1);
            let pick = next();
            match (next() % 8, g.node.get(pick % g.node.len().max(1)).and_then(|n| n.output.first().cloned())) {
                (0, _) => g.node.get_mut(i).into_iter().flat_map(|n| &mut n.attribute).for_each(|a| {
                    a.i = a.i.map(|_| odd[pick % odd.len()]);
                    a.ints.iter_mut().for_each(|v| *v = odd[(pick / 3) % odd.len()]);
                }),
                (1, _) if i < g.node.len() => drop(g.node.remove(i)),
                (2, Some(other)) => g.node.get_mut(i).into_iter().for_each(|n| n.input.insert(0, other.clone())),
                (3, _) => {
                    g.initializer.iter_mut().filter(|t| t.data_type == Some(pb::DataType::Int64 as i32)).for_each(|t| {
                        let len = t.raw_data.as_ref().map_or(0, Vec::len) / 8;
                        t.raw_data = Some(odd[pick % odd.len()].to_le_bytes().repeat(len));
                    })
                }
                (4, _) => g.initializer.iter_mut().step_by(1 + pick % 7).for_each(|t| {
                    t.dims.iter_mut().for_each(|d| *d = odd[pick % odd.len()]);
                }),
                (5, _) => g
                    .node
                    .get_mut(i)
                    .into_iter()
                    .for_each(|n| n.input.insert(pick % (n.input.len() + 1), String::new())),
                (6, _) => {
                    for input in &mut g.input {
                        if let Some(pb::type_proto::Value::TensorType(t)) =
                            input.r#type.as_mut().and_then(|t| t.value.as_mut())
                        {
                            let dims = t.shape.as_mut().map(|s| &mut s.dim);
                            if let Some(d) = dims.and_then(|d| d.first_mut()) {
                                d.value = Some(pb::tensor_shape_proto::dimension::Value::DimParam(
                                    params[pick % params.len()].into(),
                                ));
                            }
                        }
                    }
                }
                _ => {
                    let op = g.node.get(pick % g.node.len().max(1)).map(|n| n.op_type.clone());
                    if let (Some(n), Some(op)) = (g.node.get_mut(i), op) {
                        n.op_type = op;
                        n.output.push(format!("extra{round}"));
                    }
                }
            }
        }
        match infer_graph(&g) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} accepted, {refused} refused");
}

/// Exports real graphs in every format gpt2c writes and checks inference reproduces the declared
/// outputs exactly.
#[test]
fn exported_graphs_infer_to_their_declared_outputs() {
    let models = repo_root().join("models");
    let tmp = tempfile::tempdir().unwrap();
    let mut cases: Vec<(&str, Precision, Option<Task>, Option<i64>)> = Vec::new();
    for target in [Target::Portable, Target::Ort] {
        for quantize in [Quantize::None, Quantize::Int8, Quantize::Int8Weights, Quantize::Int4] {
            cases.push(("tiny-default", Precision { quantize, target, ..Default::default() }, None, None));
        }
        for io_dtype in [FloatType::Fp32, FloatType::Fp16] {
            let p = Precision { dtype: FloatType::Fp16, io_dtype, target, ..Default::default() };
            cases.push(("tiny-default", p, None, None));
        }
        for task in [Task::TextGeneration, Task::FeatureExtraction, Task::FeatureExtractionWithPast] {
            cases.push(("tiny-default", Precision { target, ..Default::default() }, Some(task), None));
        }
        for head in [
            "heads/base",
            "heads/cross",
            "heads/seq-cls",
            "heads/seq-cls-nopad",
            "heads/tok-cls",
            "heads/qa",
            "heads/double-heads",
            "heads/double-heads-last",
            "heads/double-heads-mean",
            "heads/act-gelu_10",
            "heads/act-mish",
            "heads/act-leaky_relu",
            "heads/act-quick_gelu",
            "heads/act-relu2",
            "tiny-scaled-attn",
            "tiny-untied",
        ] {
            cases.push((head, Precision { target, ..Default::default() }, None, None));
        }
        let q = Precision { quantize: Quantize::Int8, target, ..Default::default() };
        cases.push(("heads/cross", q.clone(), None, None));
        cases.push(("heads/double-heads", q, None, None));
    }
    for opset in [14, 16] {
        cases.push(("tiny-default", Precision::default(), None, Some(opset)));
        let q = Precision { quantize: Quantize::Int8, ..Default::default() };
        cases.push(("heads/double-heads-mean", q, None, Some(opset)));
    }
    let skip = Precision { quantize: Quantize::Int4, skip: vec![Part::Attn], ..Default::default() };
    cases.push(("tiny-default", skip, None, None));

    let mut failures = Vec::new();
    for (i, (model, precision, task, opset)) in cases.into_iter().enumerate() {
        let label = format!("{model} {precision:?} {task:?} opset {opset:?}");
        let opset = opset.unwrap_or(DEFAULT_OPSET.max(precision.min_opset()));
        let options = ExportOptions {
            graph: GraphOptions { opset, precision, task, ..Default::default() },
            ..Default::default()
        };
        let out = tmp.path().join(format!("case{i}"));
        export(&models.join(model), &out, &options, &mut |_| {}).unwrap_or_else(|e| panic!("{label}: {e}"));
        let bytes = std::fs::read(out.join("model.onnx")).unwrap();
        let model = gpt2c_proto::decode_model(&bytes).unwrap();
        let graph = model.graph.unwrap();
        if let Err(e) = infer_graph(&graph) {
            failures.push(format!("{label}: {e}"));
            continue;
        }
        // Without the declared output types, nothing can fill in what inference left unknown.
        let mut bare = graph.clone();
        bare.output.iter_mut().for_each(|o| o.r#type = None);
        bare.value_info.clear();
        let inferred = match infer_graph(&bare) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{label} (outputs undeclared): {e}"));
                continue;
            }
        };
        for o in &graph.output {
            let declared = declared(o.r#type.as_ref()).unwrap();
            let got = inferred.get(o.name()).unwrap();
            if *got != declared {
                failures.push(format!("{label}: output {} inferred {got} declared {declared}", o.name()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
