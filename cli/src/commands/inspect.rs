//! `gpt2c inspect`: what an ONNX file is — inputs and outputs with their dims, opsets, an op
//! histogram, parameters and bytes by element type, external data — as text or JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use gpt2c_proto as pb;
use serde_json::{Value, json};

/// Describe an ONNX model file.
///
/// Prints the producer, IR version and opset imports, every graph input and output with its
/// element type and dims (numbers or names), how many nodes of each operator (`domain.op` for
/// non-default domains), the initializers' element count and bytes by element type, inline or in
/// external data files (with the files and their referenced bytes), and the metadata properties.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// An ONNX file (`model.onnx`), or an export folder holding one.
    pub model: PathBuf,
    /// Print one JSON object (keys: path, ir_version, producer, opsets, inputs, outputs, nodes, ops,
    /// initializers {count, elements, bytes, by_dtype, external_files}, metadata).
    #[arg(long)]
    pub json: bool,
}

fn dims(v: &pb::ValueInfoProto) -> (String, Vec<Value>) {
    let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return ("?".into(), Vec::new());
    };
    let dtype = pb::data_type(t.elem_type.unwrap_or(0)).map_or("?".into(), |d| format!("{d:?}").to_lowercase());
    let shape = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) => json!(n),
                    Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => json!(p),
                    None => json!("?"),
                })
                .collect()
        })
        .unwrap_or_default();
    (dtype, shape)
}

fn describe(path: &std::path::Path, model: &pb::ModelProto) -> Value {
    let graph = model.graph.clone().unwrap_or_default();
    let io = |values: &[pb::ValueInfoProto]| -> Vec<Value> {
        values
            .iter()
            .map(|v| {
                let (dtype, shape) = dims(v);
                json!({ "name": v.name(), "dtype": dtype, "shape": shape })
            })
            .collect()
    };
    let mut ops: BTreeMap<String, u64> = BTreeMap::new();
    for n in &graph.node {
        let name =
            if n.domain().is_empty() { n.op_type().to_string() } else { format!("{}.{}", n.domain(), n.op_type()) };
        *ops.entry(name).or_default() += 1;
    }
    let (mut elements, mut bytes) = (0u64, 0u64);
    let mut by_dtype: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut external: BTreeMap<String, u64> = BTreeMap::new();
    for t in &graph.initializer {
        // Dims come from the file: saturate rather than wrap (verify reports the inconsistency).
        let n: u64 = t.dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d.max(0) as u64));
        let dtype = pb::data_type(t.data_type.unwrap_or(0)).ok();
        let size = dtype.and_then(pb::element_size).map_or(0, |s| (s as u64).saturating_mul(n));
        let entry = by_dtype.entry(dtype.map_or("?".into(), |d| format!("{d:?}").to_lowercase())).or_default();
        *entry = (entry.0 + 1, entry.1.saturating_add(n), entry.2.saturating_add(size));
        elements = elements.saturating_add(n);
        bytes = bytes.saturating_add(size);
        let get = |k: &str| t.external_data.iter().find(|e| e.key() == k).map(|e| e.value().to_string());
        if let Some(location) = get("location") {
            let length = get("length").and_then(|l| l.parse().ok()).unwrap_or(size);
            let total = external.entry(location).or_default();
            *total = total.saturating_add(length);
        }
    }
    json!({
        "path": path.display().to_string(),
        "ir_version": model.ir_version,
        "producer": { "name": model.producer_name(), "version": model.producer_version() },
        "opsets": model.opset_import.iter().map(|o| json!({ "domain": o.domain(), "version": o.version() })).collect::<Vec<_>>(),
        "inputs": io(&graph.input),
        "outputs": io(&graph.output),
        "nodes": graph.node.len(),
        "ops": ops,
        "initializers": {
            "count": graph.initializer.len(),
            "elements": elements,
            "bytes": bytes,
            "by_dtype": by_dtype.into_iter().map(|(k, (c, e, b))| (k, json!({ "tensors": c, "elements": e, "bytes": b }))).collect::<serde_json::Map<_, _>>(),
            "external_files": external,
        },
        "metadata": model.metadata_props.iter().map(|e| (e.key().to_string(), json!(e.value()))).collect::<serde_json::Map<_, _>>(),
    })
}

fn print_text(out: &mut impl Write, d: &Value) -> std::io::Result<()> {
    writeln!(out, "{}", d["path"].as_str().unwrap_or(""))?;
    writeln!(
        out,
        "  producer {} {}, IR version {}",
        d["producer"]["name"].as_str().unwrap_or(""),
        d["producer"]["version"].as_str().unwrap_or(""),
        d["ir_version"]
    )?;
    let opsets: Vec<String> = d["opsets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            format!(
                "{}:{}",
                if o["domain"] == "" { "ai.onnx" } else { o["domain"].as_str().unwrap_or("") },
                o["version"]
            )
        })
        .collect();
    writeln!(out, "  opsets {}", opsets.join(", "))?;
    for (title, key) in [("inputs", "inputs"), ("outputs", "outputs")] {
        writeln!(out, "  {title}:")?;
        for v in d[key].as_array().into_iter().flatten() {
            let shape: Vec<String> = v["shape"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s.as_str().map_or(s.to_string(), String::from))
                .collect();
            writeln!(
                out,
                "    {} {} [{}]",
                v["name"].as_str().unwrap_or(""),
                v["dtype"].as_str().unwrap_or(""),
                shape.join(", ")
            )?;
        }
    }
    let ops: Vec<String> = d["ops"].as_object().into_iter().flatten().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(out, "  {} nodes: {}", d["nodes"], ops.join(", "))?;
    let init = &d["initializers"];
    writeln!(out, "  {} initializers, {} elements, {} bytes", init["count"], init["elements"], init["bytes"])?;
    for (k, v) in init["by_dtype"].as_object().into_iter().flatten() {
        writeln!(out, "    {k}: {} tensors, {} elements, {} bytes", v["tensors"], v["elements"], v["bytes"])?;
    }
    for (k, v) in init["external_files"].as_object().into_iter().flatten() {
        writeln!(out, "    external data {k}: {v} bytes")?;
    }
    for (k, v) in d["metadata"].as_object().into_iter().flatten() {
        writeln!(out, "  {k} = {}", v.as_str().unwrap_or(""))?;
    }
    Ok(())
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let path = if args.model.is_dir() { args.model.join("model.onnx") } else { args.model.clone() };
    let size = std::fs::metadata(&path).with_context(|| format!("{}: cannot read", path.display()))?.len();
    if size > pb::MAX_MODEL_BYTES {
        anyhow::bail!("{}: {size} bytes: not an ONNX model (protobuf's limit for one model is 2 GiB)", path.display());
    }
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let model = pb::decode_model(&bytes).map_err(|e| anyhow::anyhow!("{}: not an ONNX model: {e}", path.display()))?;
    // Every byte string decodes as some ModelProto (zero bytes as an empty one): a model is a graph.
    if model.graph.is_none() {
        anyhow::bail!(
            "{}: not an ONNX model: its {size} bytes hold no graph (an empty or foreign file?)",
            path.display()
        );
    }
    let description = describe(&path, &model);
    let mut out = crate::output::stdout();
    if args.json {
        writeln!(out, "{description}")?;
    } else {
        print_text(&mut out, &description)?;
    }
    Ok(())
}
