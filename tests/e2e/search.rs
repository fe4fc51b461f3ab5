//! `gpt2c export --generation`: ONNX Runtime's GreedySearch, BeamSearch and Sampling running the
//! exported decoder, called through ONNX Runtime's Python API as a deployment calls them
//! (`tests/clients/ort_search.py`), against transformers' generate() (`models/generation/*.json`).
//! Where the operators and transformers disagree, the difference is what is tested; the Triton
//! repository is read with Triton's own config schema.

use std::path::{Path, PathBuf};
use std::process::Command;

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::gpt2::search::{Generation, SearchOverrides};
use gpt2c_compiler::layout::Layout;
use gpt2c_tests::{fixture, python_with, repo_root, shared_dir};
use serde_json::{Map, Value, json};

struct Case {
    name: String,
    prompts: Vec<Vec<i64>>,
    kwargs: Map<String, Value>,
    sequences: Vec<Vec<i64>>,
    scores: Option<Vec<f64>>,
}

fn load_cases(path: &Path) -> Vec<Case> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().into(),
            prompts: serde_json::from_value(c["prompts"].clone()).unwrap(),
            kwargs: c["kwargs"].as_object().unwrap().clone(),
            sequences: serde_json::from_value(c["sequences"].clone()).unwrap(),
            scores: c.get("sequences_scores").map(|s| serde_json::from_value(s.clone()).unwrap()),
        })
        .collect()
}

/// A copy of checkpoint `src` whose generation_config.json has `settings` on top.
fn checkpoint_with(src: &Path, settings: &Value) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let gen_path = tmp.path().join("generation_config.json");
    let mut generation: Map<String, Value> =
        std::fs::read_to_string(&gen_path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    for (k, v) in settings.as_object().unwrap() {
        generation.insert(k.clone(), v.clone());
    }
    std::fs::write(&gen_path, serde_json::to_string(&generation).unwrap()).unwrap();
    tmp
}

/// Exports `ckpt` with `--generation`, returning the folder and its model file.
fn export_search(ckpt: &Path, options: &ExportOptions) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    gpt2c_compiler::export(ckpt, &out, options, &mut |_| {}).unwrap_or_else(|e| panic!("export failed: {e}"));
    (tmp, out)
}

fn search_options(generation: Generation, search: SearchOverrides) -> ExportOptions {
    ExportOptions { generation: Some(generation), search, ..Default::default() }
}

/// Runs `cases` through the client; one result per case.
fn run_client(python: &Path, model: &Path, cases: &[Value]) -> Vec<Value> {
    let file = model.with_file_name("cases.json");
    std::fs::write(&file, serde_json::to_string(cases).unwrap()).unwrap();
    let out = Command::new(python)
        .arg(repo_root().join("tests/clients/ort_search.py"))
        .arg(model)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "ort_search.py: {}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), cases.len(), "one result per case");
    results
}

/// The new tokens of a row after its first `width` (the padded prompt), up to the first of `stops`,
/// and whether a stop ended them.
fn generated(row: &[i64], width: usize, stops: &[i64]) -> (Vec<i64>, bool) {
    let new = &row[width.min(row.len())..];
    match new.iter().position(|t| stops.contains(t)) {
        Some(end) => (new[..end].to_vec(), true),
        None => (new.to_vec(), false),
    }
}

fn int(kwargs: &Map<String, Value>, key: &str) -> Option<i64> {
    kwargs.get(key).and_then(Value::as_i64)
}

/// The client case for a fixture case (prompts, pad, lengths and the inputs the operator takes).
fn client_case(case: &Case, pad: i64) -> Value {
    let width = case.prompts.iter().map(Vec::len).max().unwrap();
    let k = &case.kwargs;
    let min_length = int(k, "min_length").unwrap_or(0).max(int(k, "min_new_tokens").map_or(0, |n| width as i64 + n));
    json!({
        "prompts": case.prompts,
        "pad": pad,
        "max_new_tokens": int(k, "max_new_tokens").unwrap(),
        "min_length": min_length,
        "repetition_penalty": k.get("repetition_penalty").and_then(Value::as_f64).unwrap_or(1.0),
        "num_beams": int(k, "num_beams").unwrap_or(1),
        "num_return_sequences": int(k, "num_return_sequences").unwrap_or(1),
        "length_penalty": k.get("length_penalty").and_then(Value::as_f64).unwrap_or(1.0),
    })
}

/// Settings an operator takes: inputs, plus the attributes the export fixes.
const TAKEN: [&str; 12] = [
    "max_new_tokens",
    "do_sample",
    "pad_token_id",
    "eos_token_id",
    "repetition_penalty",
    "min_length",
    "min_new_tokens",
    "no_repeat_ngram_size",
    "num_beams",
    "num_return_sequences",
    "length_penalty",
    "early_stopping",
];

/// Greedy and beam-search fixture cases the operators can run, each with the generation_config.json
/// its export needs (the attributes: EOS, pad, no_repeat_ngram_size, early_stopping).
fn runnable(cases: Vec<Case>, beams: bool) -> Vec<(Case, Value)> {
    cases
        .into_iter()
        .filter(|c| {
            let k = &c.kwargs;
            k["do_sample"] == Value::Bool(false)
                && k.keys().all(|key| TAKEN.contains(&key.as_str()))
                && (int(k, "num_beams").unwrap_or(1) > 1) == beams
                && k.get("eos_token_id").is_none_or(Value::is_i64)
                && k.get("early_stopping").is_none_or(Value::is_boolean)
                && k.contains_key("max_new_tokens")
        })
        .map(|c| {
            let k = &c.kwargs;
            let mut attrs = json!({
                "pad_token_id": k["pad_token_id"],
                "no_repeat_ngram_size": int(k, "no_repeat_ngram_size").unwrap_or(0),
            });
            if let Some(eos) = k.get("eos_token_id") {
                attrs["eos_token_id"] = eos.clone();
            }
            if let Some(es) = k.get("early_stopping") {
                attrs["early_stopping"] = es.clone();
            }
            (c, attrs)
        })
        .collect()
}

/// Runs each case on an export of `ckpt` with the attributes it needs; returns (case, result).
fn run_cases(python: &Path, ckpt: &Path, generation: Generation, cases: Vec<(Case, Value)>) -> Vec<(Case, Value)> {
    let mut out = Vec::new();
    for (case, attrs) in cases {
        let tmp = checkpoint_with(ckpt, &attrs);
        let (_dir, export) = export_search(tmp.path(), &search_options(generation, SearchOverrides::default()));
        let pad = attrs["pad_token_id"].as_i64().unwrap();
        let result = run_client(python, &export.join("model.onnx"), &[client_case(&case, pad)]).remove(0);
        out.push((case, result));
    }
    out
}

fn eos_of(case: &Case, default: i64) -> i64 {
    int(&case.kwargs, "eos_token_id").unwrap_or(default)
}

/// Greedy search in the graph gives transformers' ids: every greedy fixture case whose settings
/// GreedySearch takes (repetition penalty, min_length, min_new_tokens, no-repeat n-grams, an early
/// EOS, a left-padded batch of three prompts), on tiny-default and on the model trained on prose.
#[test]
fn greedy_search_matches_transformers() {
    let Some(python) = python_with("onnxruntime") else { return };
    let mut sources = vec![(fixture("tiny-default"), fixture("generation/tiny-default.json"), 999)];
    if let Some(shared) = shared_dir() {
        sources.push((shared.join("models/tiny-trained"), fixture("generation/tiny-trained.json"), 50256));
    }
    for (ckpt, file, default_eos) in sources {
        let cases = runnable(load_cases(&file), false);
        let names: Vec<String> = cases.iter().map(|(c, _)| c.name.clone()).collect();
        assert!(names.iter().any(|n| n == "batch_of_three"), "{names:?}");
        for (case, result) in run_cases(&python, &ckpt, Generation::Greedy, cases) {
            let width = case.prompts.iter().map(Vec::len).max().unwrap();
            let (eos, pad) = (eos_of(&case, default_eos), int(&case.kwargs, "pad_token_id").unwrap());
            let rows: Vec<Vec<i64>> = serde_json::from_value(result["sequences"].clone()).unwrap();
            assert_eq!(rows.len(), case.sequences.len(), "{}: one sequence per prompt", case.name);
            for (got, want) in rows.iter().zip(&case.sequences) {
                assert_eq!(&got[..width], &want[..width], "{}: the padded prompt comes back", case.name);
                // The operator writes pad where transformers writes EOS.
                assert_eq!(generated(got, width, &[pad, eos]), generated(want, width, &[eos]), "{}", case.name);
            }
        }
        eprintln!("{}: {} greedy cases", file.display(), names.len());
    }
}

/// Beam search in the graph, 4 beams × length_penalty {0.5, 1, 2} × early_stopping {true, false}, two
/// sequences returned, where no hypothesis ends early (the rare default EOS): transformers' ids, and
/// scores that differ only by the documented length normalisation — the operator divides a
/// hypothesis's log-probability by (prompt + generated tokens)^length_penalty, transformers by
/// (generated tokens)^length_penalty, so score × length^length_penalty is the same number both ways.
#[test]
fn beam_search_matches_transformers_where_no_hypothesis_ends_early() {
    let Some(python) = python_with("onnxruntime") else { return };
    let cases: Vec<(Case, Value)> = runnable(load_cases(&fixture("generation/search.json")), true);
    assert_eq!(cases.len(), 6, "lp 0.5/1/2 × early_stopping true/false");
    for (case, result) in run_cases(&python, &fixture("tiny-default"), Generation::Beam, cases) {
        let lp = case.kwargs["length_penalty"].as_f64().unwrap();
        let width = case.prompts[0].len();
        let rows: Vec<Vec<Vec<i64>>> = serde_json::from_value(result["sequences"].clone()).unwrap();
        let scores: Vec<Vec<f64>> = serde_json::from_value(result["scores"].clone()).unwrap();
        let want = case.scores.as_ref().unwrap();
        assert_eq!((rows.len(), rows[0].len(), scores[0].len(), want.len()), (1, 2, 2, 2), "{}", case.name);
        assert_eq!(&rows[0], &case.sequences, "{}: transformers' sequences", case.name);
        let generated = (rows[0][0].len() - width) as f64;
        for (ours, theirs) in scores[0].iter().zip(want) {
            let (sum_ours, sum_theirs) = (ours * (width as f64 + generated).powf(lp), theirs * generated.powf(lp));
            assert!((sum_ours - sum_theirs).abs() < 1e-3, "{}: {sum_ours} vs {sum_theirs}", case.name);
        }
    }
}

/// Where hypotheses end early (EOS is token 58, which comes soon), the length normalisation changes
/// which hypotheses win, as documented: every score the operator returns is the hypothesis's summed
/// log-probability (recomputed from the plain export's logits, EOS included) over (prompt + generated
/// tokens without EOS)^length_penalty, every transformers score the same sum over (generated tokens
/// with EOS)^length_penalty — and the two rankings differ in some case.
#[test]
fn beam_search_normalises_length_with_the_prompt_where_hypotheses_end_early() {
    let Some(python) = python_with("onnxruntime") else { return };
    let cases: Vec<(Case, Value)> = runnable(load_cases(&fixture("generation/tiny-default.json")), true)
        .into_iter()
        .filter(|(c, _)| c.name.starts_with("beam_lp"))
        .collect();
    assert_eq!(cases.len(), 6, "lp 0.5/1/2 × early_stopping true/false");
    let (_plain_dir, plain) = gpt2c_tests::export_fixture("tiny-default", &ExportOptions::default());
    let model = gpt2c_runtime::ExportedModel::open(&plain).unwrap();
    let mut session = model.session(gpt2c_runtime::BackendKind::Ort, &Default::default()).unwrap();
    let mut differ = 0;
    for (case, result) in run_cases(&python, &fixture("tiny-default"), Generation::Beam, cases) {
        let (lp, eos) = (case.kwargs["length_penalty"].as_f64().unwrap(), eos_of(&case, 999));
        let prompt = &case.prompts[0];
        let width = prompt.len();
        let rows: Vec<Vec<Vec<i64>>> = serde_json::from_value(result["sequences"].clone()).unwrap();
        let scores: Vec<Vec<f64>> = serde_json::from_value(result["scores"].clone()).unwrap();
        let want = case.scores.as_ref().unwrap();
        let counts = (rows[0].len(), scores[0].len(), case.sequences.len(), want.len());
        assert_eq!(counts, (2, 2, 2, 2), "{}", case.name);
        let ours: Vec<(Vec<i64>, bool)> = rows[0].iter().map(|r| generated(r, width, &[999, eos])).collect();
        let theirs: Vec<(Vec<i64>, bool)> = case.sequences.iter().map(|r| generated(r, width, &[eos])).collect();
        differ += usize::from(ours != theirs);
        for (hypotheses, scores, counts_prompt) in [(&ours, &scores[0], true), (&theirs, want, false)] {
            for ((tokens, ended), score) in hypotheses.iter().zip(scores) {
                let mut continuation = tokens.clone();
                if *ended {
                    continuation.push(eos);
                }
                let sum = log_probability(session.as_mut(), prompt, &continuation);
                let length = if counts_prompt { width + tokens.len() } else { continuation.len() } as f64;
                let expected = sum / length.powf(lp);
                assert!(
                    (score - expected).abs() < 1e-3 * expected.abs().max(1.0),
                    "{} ({}): score {score} vs {expected} = {sum} / {length}^{lp}",
                    case.name,
                    if counts_prompt { "operator" } else { "transformers" }
                );
            }
        }
    }
    assert!(differ >= 1, "the normalisations rank hypotheses differently in some case");
}

/// Every position's logits of one unpadded row of `ids`, from an empty cache (left empty after).
fn teacher_forced(session: &mut dyn gpt2c_runtime::DecoderSession, ids: &[i64]) -> gpt2c_runtime::session::AllLogits {
    session.reset();
    let step = gpt2c_runtime::session::StepInput {
        rows: 1,
        seq: ids.len(),
        input_ids: ids,
        attention_mask: &vec![1; ids.len()],
        position_ids: &(0..ids.len() as i64).collect::<Vec<_>>(),
    };
    let logits = session.forward_all(&step).unwrap();
    session.reset();
    logits
}

/// Σ log p(continuation | prompt) under the export's logits (f64 log-softmax), teacher-forced.
fn log_probability(session: &mut dyn gpt2c_runtime::DecoderSession, prompt: &[i64], continuation: &[i64]) -> f64 {
    let logits = teacher_forced(session, &[prompt, continuation].concat());
    continuation
        .iter()
        .enumerate()
        .map(|(i, &token)| {
            let row = logits.at(0, prompt.len() - 1 + i);
            let max = row.iter().map(|&x| f64::from(x)).fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|&x| (f64::from(x) - max).exp()).sum::<f64>().ln();
            f64::from(row[token as usize]) - lse
        })
        .sum()
}

/// The operator numbers positions from `pad_token_id`, not from the attention mask: given a prompt
/// holding tiny-default's pad (= EOS) token and an all-ones mask, it attends to the token but gives
/// it position 0 and numbers the others as if it were absent — neither what transformers computes
/// (positions 0, 1, 2, …) nor transformers with the token masked, but what transformers computes with
/// those position ids.
#[test]
fn the_operator_numbers_positions_from_the_pad_token() {
    let Some(python) = python_with("onnxruntime") else { return };
    let cases = load_cases(&fixture("generation/search.json"));
    let by_name = |n: &str| cases.iter().find(|c| c.name == n).unwrap_or_else(|| panic!("no case {n}"));
    let attended = by_name("pad_in_prompt_attended");
    let masked = by_name("pad_in_prompt_masked");
    let operator = by_name("pad_in_prompt_operator_positions");
    let options = search_options(Generation::Greedy, Default::default());
    let (_dir, export) = export_search(&fixture("tiny-default"), &options);
    let result = run_client(&python, &export.join("model.onnx"), &[client_case(attended, 999)]).remove(0);
    let rows: Vec<Vec<i64>> = serde_json::from_value(result["sequences"].clone()).unwrap();
    let width = attended.prompts[0].len();
    let ours = generated(&rows[0], width, &[999]);
    assert_eq!(ours, generated(&operator.sequences[0], width, &[999]), "the pad token numbered away");
    assert_ne!(ours, generated(&attended.sequences[0], width, &[999]), "not transformers' positions");
    assert_ne!(ours, generated(&masked.sequences[0], width, &[999]), "not the token masked");
}

/// Sampling in the graph: the same seed gives the same ids, another seed others, and every token
/// drawn lies in the top-p set of the model's distribution at that step (recomputed from the plain
/// export's logits at temperature 0.8, top_p 0.6).
#[test]
fn sampling_is_reproducible_and_stays_in_the_top_p_set() {
    let Some(python) = python_with("onnxruntime") else { return };
    let (temperature, top_p) = (0.8f32, 0.6f32);
    let search =
        SearchOverrides { temperature: Some(temperature), top_p: Some(top_p), top_k: Some(0), ..Default::default() };
    let (_dir, export) = export_search(&fixture("tiny-default"), &search_options(Generation::Sampling, search));
    let prompt: Vec<i64> = vec![51, 491, 571, 618, 286];
    let case = |seed: i64| json!({"prompts": [prompt], "pad": 999, "max_new_tokens": 24, "seed": seed});
    let results = run_client(&python, &export.join("model.onnx"), &[case(7), case(7), case(8)]);
    let rows: Vec<Vec<i64>> = results
        .iter()
        .map(|r| r["sequences"][0].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect())
        .collect();
    assert_eq!(rows[0], rows[1], "seed 7 twice");
    assert_ne!(rows[0], rows[2], "seeds 7 and 8");
    let (_plain_dir, plain) = gpt2c_tests::export_fixture("tiny-default", &ExportOptions::default());
    let model = gpt2c_runtime::ExportedModel::open(&plain).unwrap();
    let options = gpt2c_runtime::RunnerOptions::default();
    for row in [&rows[0], &rows[2]] {
        let (tokens, _) = generated(row, prompt.len(), &[999]);
        assert!(tokens.len() >= 4, "{row:?}");
        let mut session = model.session(gpt2c_runtime::BackendKind::Ort, &options).unwrap();
        let logits = teacher_forced(session.as_mut(), &[prompt.clone(), tokens.clone()].concat());
        for (i, &token) in tokens.iter().enumerate() {
            let kept = top_p_set(logits.at(0, prompt.len() - 1 + i), temperature, top_p);
            assert!(kept.contains(&(token as usize)), "token {i} ({token}) outside the top-p set {kept:?}");
        }
    }
}

/// transformers' TopPLogitsWarper at `temperature`: the tokens left after removing those whose
/// ascending cumulative probability is at most 1 − top_p (the most likely one always stays).
fn top_p_set(logits: &[f32], temperature: f32, top_p: f32) -> Vec<usize> {
    let scaled: Vec<f64> = logits.iter().map(|&x| f64::from(x / temperature)).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = scaled.iter().map(|x| (x - max).exp()).sum();
    let mut order: Vec<usize> = (0..scaled.len()).collect();
    order.sort_by(|&a, &b| scaled[a].total_cmp(&scaled[b]));
    let mut cumulative = 0.0;
    let mut kept = Vec::new();
    for (rank, &t) in order.iter().enumerate() {
        cumulative += (scaled[t] - max).exp() / sum;
        if cumulative > 1.0 - f64::from(top_p) || rank + 1 == order.len() {
            kept.push(t);
        }
    }
    kept
}

/// A max_length past the position table is clamped in the graph: tiny-default has 64 positions,
/// 100 are asked, 64 come back and the run succeeds.
#[test]
fn max_length_past_the_context_is_clamped_in_the_graph() {
    let Some(python) = python_with("onnxruntime") else { return };
    for generation in [Generation::Greedy, Generation::Beam] {
        let (_dir, export) = export_search(&fixture("tiny-default"), &search_options(generation, Default::default()));
        let case = json!({"prompts": [[51, 491, 571]], "pad": 999, "max_new_tokens": 97, "num_beams": 2});
        let result = run_client(&python, &export.join("model.onnx"), &[case]).remove(0);
        let width = match generation {
            Generation::Beam => result["sequences"][0][0].as_array().unwrap().len(),
            _ => result["sequences"][0].as_array().unwrap().len(),
        };
        assert_eq!(width, 64, "{generation:?}");
    }
}

/// `--layout triton --generation`: config.pbtxt parses as Triton's ModelConfig (tritonclient's
/// model_config_pb2), names the ONNX file's inputs and outputs with their types, and the model
/// in `1/` runs a batch as Triton sends it: input_ids and attention_mask alone, stacked.
#[test]
fn triton_repository_parses_and_runs_a_batch() {
    let Some(python) = python_with("tritonclient.grpc.model_config_pb2") else { return };
    for (generation, outputs) in
        [(Generation::Greedy, vec!["sequences"]), (Generation::Beam, vec!["sequences", "sequences_scores"])]
    {
        let search = SearchOverrides {
            max_new_tokens: Some(6),
            num_beams: Some(3),
            num_return_sequences: Some(2),
            ..Default::default()
        };
        let search = if generation == Generation::Beam {
            search
        } else {
            SearchOverrides { max_new_tokens: Some(6), ..Default::default() }
        };
        let options = ExportOptions {
            generation: Some(generation),
            search,
            layout: Layout::Triton,
            triton_name: Some("gpt2".into()),
            triton_max_batch_size: Some(4),
            ..Default::default()
        };
        let (_dir, export) = export_search(&fixture("tiny-default"), &options);
        let config = export.join("gpt2/config.pbtxt");
        let model = export.join("gpt2/1/model.onnx");
        for side in ["config.json", "generation_config.json", "tokenizer.json"] {
            assert!(export.join("gpt2").join(side).is_file(), "{side} beside config.pbtxt");
        }
        let script = r#"
import json, sys
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
import onnx
cfg = text_format.Parse(open(sys.argv[1]).read(), model_config_pb2.ModelConfig())
m = onnx.load(sys.argv[2])
types = {onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.FLOAT: "TYPE_FP32"}
def io(values):
    return [{"name": v.name, "type": types[v.type.tensor_type.elem_type],
             "dims": [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim][1:]}
            for v in values]
def cfg_io(values):
    return [{"name": v.name, "type": model_config_pb2.DataType.Name(v.data_type), "dims": list(v.dims)} for v in values]
print(json.dumps({"name": cfg.name, "platform": cfg.platform, "max_batch_size": cfg.max_batch_size,
                  "dynamic": cfg.HasField("dynamic_batching"), "kinds": [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group],
                  "inputs": cfg_io(cfg.input), "outputs": cfg_io(cfg.output),
                  "onnx_inputs": io(m.graph.input), "onnx_outputs": io(m.graph.output)}))
"#;
        let out = Command::new(&python).args(["-c", script]).arg(&config).arg(&model).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["name"], "gpt2");
        assert_eq!(doc["platform"], "onnxruntime_onnx");
        assert_eq!(doc["max_batch_size"], 4);
        assert_eq!(doc["dynamic"], true);
        assert_eq!(doc["kinds"], json!(["KIND_CPU"]));
        assert_eq!(doc["inputs"], doc["onnx_inputs"], "config.pbtxt's inputs are the model's");
        assert_eq!(doc["outputs"], doc["onnx_outputs"], "config.pbtxt's outputs are the model's");
        let names: Vec<&str> = doc["inputs"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["input_ids", "attention_mask"], "Triton requests carry ids and mask alone");
        let names: Vec<&str> = doc["outputs"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, outputs);
        // A batch of two prompts of one length, as Triton stacks two requests.
        let case = json!({"prompts": [[51, 491, 571, 618], [39, 408, 78, 567]], "pad": 999, "fixed": true, "max_new_tokens": 6});
        let result = run_client(&python, &model, &[case]).remove(0);
        let rows = result["sequences"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "one result per request");
        let width = |r: &Value| match generation {
            Generation::Beam => {
                assert_eq!(r.as_array().unwrap().len(), 2, "two sequences per prompt");
                r[0].as_array().unwrap().len()
            }
            _ => r.as_array().unwrap().len(),
        };
        assert_eq!(width(&rows[0]), 4 + 6, "max_length = prompt + max_new_tokens, a constant of the graph");
    }
}
