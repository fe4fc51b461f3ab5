//! Structural checks of an ONNX model, with no runtime: the protobuf decodes, versions are
//! consistent, names are unique, nodes are in topological order, initializers hold the data their
//! type and dims declare (inline, or in external files that stay inside the model's folder), and
//! every operator is one we know at the imported opset.
//!
//! Each problem is a [`Finding`] tagged with the [`Check`] that found it; an empty list is a pass.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path};

use gpt2c_proto::{self as pb, DataType};

use crate::infer::ops::normalize_domain;
use serde::Serialize;

pub use gpt2c_proto::MAX_MODEL_BYTES;

/// What a finding is about (stable names in the JSON report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The file is a `ModelProto` with a graph.
    Protobuf,
    /// `ir_version` and the opset imports agree with each other and with the nodes' domains.
    Versions,
    /// Value names are unique.
    Names,
    /// Every node input is produced before the node; every graph output is produced.
    Topology,
    /// Initializer element type × dims match the data they hold.
    Initializers,
    /// External data: a relative path inside the model's folder, within the file's size.
    ExternalData,
    /// Every operator is known at its domain's imported version.
    Operators,
    /// Inputs and outputs keep the export contract: names, element types, dimension names.
    Contract,
    /// Element types and shapes inferred node by node agree with what the graph declares.
    Inference,
    /// A search operator's decoder subgraph, as a model of its own: structure, its contract
    /// (ONNX Runtime's GPT-2 subgraph form), inference.
    Decoder,
}

impl Check {
    /// Every structural check, in the order they run.
    pub const ALL: [Check; 10] = [
        Check::Protobuf,
        Check::Versions,
        Check::Names,
        Check::Topology,
        Check::Initializers,
        Check::ExternalData,
        Check::Operators,
        Check::Contract,
        Check::Inference,
        Check::Decoder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::Protobuf => "protobuf",
            Check::Versions => "versions",
            Check::Names => "names",
            Check::Topology => "topology",
            Check::Initializers => "initializers",
            Check::ExternalData => "external_data",
            Check::Operators => "operators",
            Check::Contract => "contract",
            Check::Inference => "inference",
            Check::Decoder => "decoder",
        }
    }
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub check: Check,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.check.name(), self.message)
    }
}

fn finding(check: Check, message: impl Into<String>) -> Finding {
    Finding { check, message: message.into() }
}

/// Decodes `bytes` and runs every check that needs nothing but the model (not external data, not
/// the contract). Returns the model when it decodes.
pub fn check_model_bytes(bytes: &[u8]) -> (Option<pb::ModelProto>, Vec<Finding>) {
    if bytes.len() as u64 > MAX_MODEL_BYTES {
        let message = format!("{} bytes: over protobuf's 2 GiB limit for one message", bytes.len());
        return (None, vec![finding(Check::Protobuf, message)]);
    }
    let model = match pb::decode_model(bytes) {
        Ok(m) => m,
        Err(e) => return (None, vec![finding(Check::Protobuf, e.to_string())]),
    };
    let findings = check_model(&model);
    (Some(model), findings)
}

/// Every check that needs nothing but the decoded model.
pub fn check_model(model: &pb::ModelProto) -> Vec<Finding> {
    let Some(graph) = model.graph.as_ref() else {
        return vec![finding(Check::Protobuf, "the model has no graph")];
    };
    let mut out = check_versions(model, graph);
    out.extend(check_names_and_topology(graph));
    for t in &graph.initializer {
        if let Err(message) = check_initializer(t) {
            out.push(finding(Check::Initializers, message));
        }
    }
    out.extend(check_operators(model, graph));
    out
}

fn check_versions(model: &pb::ModelProto, graph: &pb::GraphProto) -> Vec<Finding> {
    let mut out = Vec::new();
    let ir = model.ir_version.unwrap_or(0);
    if ir < 3 {
        out.push(finding(Check::Versions, format!("ir_version {ir}: expected 3 or later (opset imports need it)")));
    }
    let mut imported: HashMap<&str, i64> = HashMap::new();
    for o in &model.opset_import {
        let domain = normalize_domain(o.domain());
        if imported.insert(domain, o.version()).is_some() {
            out.push(finding(Check::Versions, format!("opset of domain \"{domain}\" imported twice")));
        }
        if o.version() < 1 {
            out.push(finding(Check::Versions, format!("opset of domain \"{domain}\": version {}", o.version())));
        }
    }
    match imported.get("") {
        None => out.push(finding(Check::Versions, "no opset imported for the default domain (ai.onnx)")),
        Some(&v) if ir >= 3 && ir < pb::min_ir_version(v) => out.push(finding(
            Check::Versions,
            format!(
                "ir_version {ir} cannot carry opset {v} (ONNX requires IR version {} or later)",
                pb::min_ir_version(v)
            ),
        )),
        Some(_) => {}
    }
    let mut reported = HashSet::new();
    for (i, n) in graph.node.iter().enumerate() {
        let domain = normalize_domain(n.domain());
        if !imported.contains_key(domain) && reported.insert(domain) {
            out.push(finding(
                Check::Versions,
                format!("{}: domain \"{domain}\" has no opset import", node_label(i, n)),
            ));
        }
    }
    out
}

/// `node 12 "/h.0/attn/MatMul" (MatMul)`.
pub fn node_label(index: usize, n: &pb::NodeProto) -> String {
    let op = if n.domain().is_empty() { n.op_type().to_string() } else { format!("{}.{}", n.domain(), n.op_type()) };
    format!("node {index} \"{}\" ({op})", n.name())
}

fn check_names_and_topology(graph: &pb::GraphProto) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut defined: HashSet<&str> = HashSet::new();
    let mut inputs = HashSet::new();
    for v in &graph.input {
        if !inputs.insert(v.name()) {
            out.push(finding(Check::Names, format!("graph input \"{}\" declared twice", v.name())));
        }
        defined.insert(v.name());
    }
    let mut initializers = HashSet::new();
    for t in &graph.initializer {
        if !initializers.insert(t.name()) {
            out.push(finding(Check::Names, format!("initializer \"{}\" declared twice", t.name())));
        }
        defined.insert(t.name());
    }
    // Where each value is produced, to tell "produced later" from "never produced".
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            producer.entry(o.as_str()).or_insert(i);
        }
    }
    for (i, n) in graph.node.iter().enumerate() {
        for input in n.input.iter().filter(|x| !x.is_empty()) {
            if defined.contains(input.as_str()) {
                continue;
            }
            let message = match producer.get(input.as_str()) {
                Some(&later) => format!(
                    "{}: input \"{input}\" is used before it is produced (by node {later}): nodes are not in topological order",
                    node_label(i, n)
                ),
                None => format!("{}: input \"{input}\" is never produced", node_label(i, n)),
            };
            out.push(finding(Check::Topology, message));
        }
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if !defined.insert(o.as_str()) {
                out.push(finding(Check::Names, format!("{}: output \"{o}\" is already defined", node_label(i, n))));
            }
        }
    }
    for v in &graph.output {
        if !defined.contains(v.name()) {
            out.push(finding(Check::Topology, format!("graph output \"{}\" is never produced", v.name())));
        }
    }
    out
}

/// Element count of `dims`, or why it has none.
pub fn element_count(dims: &[i64]) -> Result<u64, String> {
    dims.iter().try_fold(1u64, |acc, &d| {
        let d = u64::try_from(d).map_err(|_| format!("negative dimension {d}"))?;
        acc.checked_mul(d).ok_or_else(|| format!("dims {dims:?} overflow 64 bits"))
    })
}

/// Bytes `n` elements of `dtype` take in raw form; `None` for types without a fixed size.
pub fn data_bytes(dtype: DataType, n: u64) -> Option<u64> {
    match dtype {
        DataType::Int4 | DataType::Uint4 | DataType::Float4e2m1 => Some(n.div_ceil(2)),
        other => pb::element_size(other).and_then(|s| (s as u64).checked_mul(n)),
    }
}

fn initializer_dtype(t: &pb::TensorProto) -> Result<DataType, String> {
    pb::data_type(t.data_type.unwrap_or(0))
        .ok()
        .filter(|d| *d != DataType::Undefined)
        .ok_or_else(|| format!("initializer \"{}\": unknown element type {}", t.name(), t.data_type.unwrap_or(0)))
}

/// Bytes the initializer's type and dims declare.
pub fn declared_bytes(t: &pb::TensorProto) -> Result<(DataType, u64), String> {
    let dtype = initializer_dtype(t)?;
    let n = element_count(&t.dims).map_err(|e| format!("initializer \"{}\": {e}", t.name()))?;
    let bytes = data_bytes(dtype, n).ok_or_else(|| {
        format!("initializer \"{}\": element type {dtype:?} has no fixed size ({n} elements)", t.name())
    })?;
    Ok((dtype, bytes))
}

/// Whether the data lives in an external file.
pub fn is_external(t: &pb::TensorProto) -> bool {
    t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
}

fn check_initializer(t: &pb::TensorProto) -> Result<(), String> {
    let (dtype, bytes) = declared_bytes(t)?;
    let name = t.name();
    let dims = &t.dims;
    if is_external(t) {
        if t.external_data.iter().all(|e| e.key() != "location") {
            return Err(format!("initializer \"{name}\": external data without a \"location\""));
        }
        return Ok(());
    }
    if !t.external_data.is_empty() {
        return Err(format!("initializer \"{name}\": external_data entries but data_location is not EXTERNAL"));
    }
    let n = element_count(dims).unwrap_or(0);
    let (field, held, wanted) = if let Some(raw) = &t.raw_data {
        ("raw_data bytes", raw.len() as u64, bytes)
    } else {
        match dtype {
            DataType::Float => ("float_data values", t.float_data.len() as u64, n),
            DataType::Int64 => ("int64_data values", t.int64_data.len() as u64, n),
            DataType::Double => ("double_data values", t.double_data.len() as u64, n),
            DataType::Uint32 | DataType::Uint64 => ("uint64_data values", t.uint64_data.len() as u64, n),
            DataType::Int4 | DataType::Uint4 => ("int32_data values", t.int32_data.len() as u64, n.div_ceil(2)),
            _ => ("int32_data values", t.int32_data.len() as u64, n),
        }
    };
    if held != wanted {
        return Err(format!(
            "initializer \"{name}\": {dtype:?} dims {dims:?} need {wanted} {field} but it holds {held}"
        ));
    }
    Ok(())
}

/// An external-data reference: file, offset, length.
struct ExternalRef<'a> {
    location: &'a str,
    offset: u64,
    length: Option<u64>,
}

fn external_ref(t: &pb::TensorProto) -> Result<ExternalRef<'_>, String> {
    let get = |k: &str| t.external_data.iter().find(|e| e.key() == k).map(|e| e.value());
    let number = |k: &str| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("initializer \"{}\": external {k} \"{v}\" is not a byte count", t.name()))
            })
            .transpose()
    };
    let location =
        get("location").ok_or_else(|| format!("initializer \"{}\": external data without a location", t.name()))?;
    Ok(ExternalRef { location, offset: number("offset")?.unwrap_or(0), length: number("length")? })
}

/// External data of every initializer: its path stays inside `dir` (the model file's folder), the
/// file exists, and the bytes it names lie within the file and match the declared size.
pub fn check_external_data(model: &pb::ModelProto, dir: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(graph) = model.graph.as_ref() else { return out };
    let root = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut sizes: HashMap<&str, Result<u64, String>> = HashMap::new();
    for t in graph.initializer.iter().filter(|t| is_external(t)) {
        let r = match external_ref(t) {
            Ok(r) => r,
            Err(m) => {
                out.push(finding(Check::ExternalData, m));
                continue;
            }
        };
        let size = sizes.entry(r.location).or_insert_with(|| external_file_size(&root, r.location));
        let size = match size {
            Ok(s) => *s,
            Err(m) => {
                out.push(finding(Check::ExternalData, format!("initializer \"{}\": {m}", t.name())));
                continue;
            }
        };
        let Ok((_, declared)) = declared_bytes(t) else { continue };
        let length = r.length.unwrap_or(declared);
        if length != declared {
            out.push(finding(
                Check::ExternalData,
                format!(
                    "initializer \"{}\": external length {length} but its type and dims need {declared} bytes",
                    t.name()
                ),
            ));
        }
        match r.offset.checked_add(length) {
            Some(end) if end <= size => {}
            _ => out.push(finding(
                Check::ExternalData,
                format!(
                    "initializer \"{}\": bytes {}..{} of \"{}\" lie beyond the file's {size} bytes (truncated external data)",
                    t.name(),
                    r.offset,
                    r.offset.saturating_add(length),
                    r.location
                ),
            )),
        }
    }
    out
}

/// The size of external file `location`, after checking it stays inside `root`.
fn external_file_size(root: &Path, location: &str) -> Result<u64, String> {
    let rel = Path::new(location);
    let escapes = rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if location.is_empty() || escapes {
        return Err(format!(
            "external data path \"{location}\" leaves the model's folder (expected a relative path without \"..\")"
        ));
    }
    let path = root.join(rel);
    let real = path.canonicalize().map_err(|e| format!("external data file \"{location}\": {e}"))?;
    if !real.starts_with(root) {
        return Err(format!("external data path \"{location}\" resolves outside the model's folder"));
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("external data file \"{location}\": {e}"))?;
    if !meta.is_file() {
        return Err(format!("external data path \"{location}\" is not a file"));
    }
    Ok(meta.len())
}

fn check_operators(model: &pb::ModelProto, graph: &pb::GraphProto) -> Vec<Finding> {
    let imported: HashMap<&str, i64> =
        model.opset_import.iter().map(|o| (normalize_domain(o.domain()), o.version())).collect();
    let mut out = Vec::new();
    let mut reported = HashSet::new();
    for (i, n) in graph.node.iter().enumerate() {
        let domain = normalize_domain(n.domain());
        let Some(&version) = imported.get(domain) else { continue }; // reported by the versions check
        // The registry that shape inference dispatches on: known here means inferred there.
        let message = match crate::infer::ops::lookup(domain, n.op_type()) {
            None => format!("{}: operator unknown to gpt2c verify", node_label(i, n)),
            Some(o) if version < o.since => {
                format!(
                    "{}: needs opset {} or later of its domain, the model imports {version}",
                    node_label(i, n),
                    o.since
                )
            }
            Some(_) => continue,
        };
        if reported.insert((domain, n.op_type())) {
            out.push(finding(Check::Operators, message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dtype: DataType, dims: &[i64], raw: usize) -> pb::TensorProto {
        pb::TensorProto {
            name: Some(name.into()),
            data_type: Some(dtype as i32),
            dims: dims.to_vec(),
            raw_data: Some(vec![0; raw]),
            ..Default::default()
        }
    }

    #[test]
    fn initializer_sizes_follow_type_and_dims() {
        assert!(check_initializer(&tensor("w", DataType::Float, &[2, 3], 24)).is_ok());
        assert!(check_initializer(&tensor("q", DataType::Int4, &[3, 3], 5)).is_ok());
        let err = check_initializer(&tensor("w", DataType::Float, &[2, 3], 20)).unwrap_err();
        assert_eq!(err, "initializer \"w\": Float dims [2, 3] need 24 raw_data bytes but it holds 20");
        let err = check_initializer(&tensor("w", DataType::Float, &[1 << 40, 1 << 40], 0)).unwrap_err();
        assert!(err.contains("overflow"), "{err}");
        let err = check_initializer(&tensor("w", DataType::Float, &[-1], 0)).unwrap_err();
        assert!(err.contains("negative"), "{err}");
    }

    #[test]
    fn external_paths_must_stay_inside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data"), [0u8; 8]).unwrap();
        assert_eq!(external_file_size(dir.path(), "data"), Ok(8));
        for bad in ["../../outside", "/etc/passwd", "a/../../b", ""] {
            let err = external_file_size(dir.path(), bad).unwrap_err();
            assert!(err.contains("leaves the model's folder"), "{bad}: {err}");
        }
    }

    #[test]
    fn ir_version_must_carry_the_opset() {
        assert_eq!(pb::min_ir_version(18), 8);
        assert_eq!(pb::min_ir_version(23), 11);
        let model = pb::ModelProto {
            ir_version: Some(8),
            opset_import: vec![pb::OperatorSetIdProto { domain: Some(String::new()), version: Some(23) }],
            graph: Some(pb::GraphProto::default()),
            ..Default::default()
        };
        let f = check_model(&model);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            f[0].to_string(),
            "[versions] ir_version 8 cannot carry opset 23 (ONNX requires IR version 11 or later)"
        );
    }
}
