//! gpt2c's generate() against transformers' generate(): the token ids
//! recorded by `models/make_generation_fixtures.py` (greedy, beam search over
//! length_penalty × early_stopping, group beam search from 4.56, every logits
//! processor, batches of different lengths), on every backend.

use std::path::Path;

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::gpt2::{GraphOptions, KvCache, Precision, Target};
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_runtime::generate::GenerationConfig;
use gpt2c_runtime::session::{Logits, StepInput};
use gpt2c_runtime::{BackendKind, DecoderSession, ExportedModel, RunnerOptions, generate};
use gpt2c_tests::{backends, export_fixture, fixture, shared_dir};
use serde_json::{Map, Value};

struct Case {
    name: String,
    prompts: Vec<Vec<u32>>,
    kwargs: Map<String, Value>,
    sequences: Vec<Vec<u32>>,
    scores: Option<Vec<f64>>,
}

fn load_cases(path: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            prompts: serde_json::from_value(c["prompts"].clone()).unwrap(),
            kwargs: c["kwargs"].as_object().unwrap().clone(),
            sequences: serde_json::from_value(c["sequences"].clone()).unwrap(),
            scores: c.get("sequences_scores").map(|s| serde_json::from_value(s.clone()).unwrap()),
        })
        .collect()
}

/// Runs every case on every backend and asserts transformers' exact token ids.
fn check_cases(export_dir: &Path, cases: &[Case]) {
    check_cases_on(export_dir, cases, &backends());
}

/// `--target ort`: opset 23 with ONNX Runtime's fused kernels.
fn ort_target() -> ExportOptions {
    let precision = Precision { target: Target::Ort, ..Default::default() };
    ExportOptions { graph: GraphOptions { opset: 23, precision, ..Default::default() }, ..Default::default() }
}

/// `--target ort --kv-cache shared`: GroupQueryAttention appending into one buffer.
fn shared_cache() -> ExportOptions {
    let precision = Precision { target: Target::Ort, kv_cache: KvCache::Shared, ..Default::default() };
    ExportOptions { graph: GraphOptions { opset: 23, precision, ..Default::default() }, ..Default::default() }
}

/// ONNX Runtime alone, when its library loads (always in CI).
fn ort_only() -> Vec<BackendKind> {
    backends().into_iter().filter(|k| *k == BackendKind::Ort).collect()
}

fn check_cases_on(export_dir: &Path, cases: &[Case], kinds: &[BackendKind]) {
    let model = ExportedModel::open(export_dir).unwrap();
    let tokenizer = model.tokenizer().unwrap();
    let limits = model.config.limits();
    // Full logits as exported, and the last-position specialization generation uses.
    for (kind, logits) in kinds.iter().flat_map(|&k| [(k, LogitsScope::All), (k, LogitsScope::Last)]) {
        let mut session = model.session(kind, &RunnerOptions { logits, ..Default::default() }).unwrap();
        for case in cases {
            let config = GenerationConfig::from_json(&model.generation_json, &case.kwargs)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let out = generate(session.as_mut(), limits, &case.prompts, &config, Some(&tokenizer), &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{} on {}: {e}", case.name, kind.name()));
            assert_eq!(out.sequences, case.sequences, "case {} on {}", case.name, kind.name());
            if let Some(want) = &case.scores {
                let got: Vec<f64> = out.results.iter().map(|r| f64::from(r.score.unwrap())).collect();
                assert_eq!(got.len(), want.len(), "case {} on {}: scores", case.name, kind.name());
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() < 1e-3, "case {} on {}: scores {got:?} vs {want:?}", case.name, kind.name());
                }
            }
        }
    }
}

#[test]
fn tiny_default_matches_transformers_4_57() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    check_cases(&out, &load_cases(&fixture("generation/tiny-default.json")));
}

#[test]
fn group_beam_search_matches_transformers_4_56() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    check_cases(&out, &load_cases(&fixture("generation/tiny-default-group-beam.json")));
}

/// The ORT target's fused graph decodes to the same tokens (greedy, sampling, beams, padded batches).
#[test]
fn ort_target_matches_transformers() {
    let (_tmp, out) = export_fixture("tiny-default", &ort_target());
    check_cases_on(&out, &load_cases(&fixture("generation/tiny-default.json")), &ort_only());
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    gpt2c_compiler::export(&shared.join("models/tiny-trained"), &out, &ort_target(), &mut |_| {}).unwrap();
    check_cases_on(&out, &load_cases(&fixture("generation/tiny-trained.json")), &ort_only());
}

/// `--kv-cache shared` decodes to transformers' tokens through ONNX Runtime's engine, which binds
/// one buffer as past and present: every processor and strategy, beams reordered in place,
/// left-padded batches, and prompts that outgrow the buffer's first 64 positions (the cache moves
/// to a larger buffer mid-generation).
#[test]
fn shared_cache_matches_transformers() {
    let (_tmp, out) = export_fixture("tiny-default", &shared_cache());
    check_cases_on(&out, &load_cases(&fixture("generation/tiny-default.json")), &ort_only());
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    gpt2c_compiler::export(&shared.join("models/tiny-trained"), &out, &shared_cache(), &mut |_| {}).unwrap();
    let mut cases = load_cases(&fixture("generation/tiny-trained.json"));
    cases.extend(load_cases(&fixture("generation/tiny-trained-long.json")));
    check_cases_on(&out, &cases, &ort_only());
}

/// The prompts that outgrow 64 positions on the default export too, on every backend.
#[test]
fn long_prompts_match_transformers() {
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    gpt2c_compiler::export(&shared.join("models/tiny-trained"), &out, &ExportOptions::default(), &mut |_| {}).unwrap();
    check_cases(&out, &load_cases(&fixture("generation/tiny-trained-long.json")));
}

/// A model trained on English prose, with the real GPT-2 vocabulary.
#[test]
fn tiny_trained_matches_transformers() {
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    gpt2c_compiler::export(&shared.join("models/tiny-trained"), &out, &ExportOptions::default(), &mut |_| {}).unwrap();
    check_cases(&out, &load_cases(&fixture("generation/tiny-trained.json")));
}

/// One unpadded decode step of `ids.len()` rows after the session's cached positions.
fn decode_step(session: &mut dyn DecoderSession, ids: &[i64]) -> Logits {
    let past = session.past_len();
    let mask = vec![1i64; ids.len() * (past + 1)];
    let positions = vec![past as i64; ids.len()];
    let step = StepInput { rows: ids.len(), seq: 1, input_ids: ids, attention_mask: &mask, position_ids: &positions };
    session.forward(&step).unwrap()
}

/// Beam search's in-place reordering (only the rows that change, only the positions after the
/// prompt they share) leaves the same cache as a full gather: the next step's logits are
/// bit-identical, on the concatenating export (every backend) and on a `--kv-cache shared` one.
#[test]
fn beam_reordering_in_place_equals_a_gather() {
    let (_t1, concat) = export_fixture("tiny-default", &ExportOptions::default());
    let (_t2, shared) = export_fixture("tiny-default", &shared_cache());
    let runs: Vec<(&Path, BackendKind)> = backends()
        .into_iter()
        .map(|k| (concat.as_path(), k))
        .chain(ort_only().into_iter().map(|k| (shared.as_path(), k)))
        .collect();
    assert!(!runs.is_empty());
    let prompt: Vec<i64> = vec![5, 17, 3, 42, 8];
    // A cycle, a duplicate and a row that stays: rows 0 and 2 swap, row 3 takes row 1's.
    let order = [2usize, 1, 0, 1];
    for (dir, kind) in runs {
        let model = ExportedModel::open(dir).unwrap();
        let mut logits = Vec::new();
        for in_place in [true, false] {
            let mut session = model.session(kind, &RunnerOptions::default()).unwrap();
            let positions: Vec<i64> = (0..prompt.len() as i64).collect();
            let mask = vec![1i64; prompt.len()];
            let step = StepInput {
                rows: 1,
                seq: prompt.len(),
                input_ids: &prompt,
                attention_mask: &mask,
                position_ids: &positions,
            };
            session.forward(&step).unwrap();
            session.select_rows(&[0, 0, 0, 0]).unwrap();
            // Two generated positions that differ in every row.
            for t in 0..2i64 {
                let ids: Vec<i64> = (0..4).map(|r| 20 + 4 * t + r).collect();
                decode_step(session.as_mut(), &ids);
            }
            if in_place {
                session.reorder_rows(&order, prompt.len()).unwrap();
            } else {
                session.select_rows(&order).unwrap();
            }
            assert_eq!(session.past_len(), prompt.len() + 2);
            let out = decode_step(session.as_mut(), &[7, 7, 7, 7]);
            assert_eq!((out.rows, out.data.len()), (4, 4 * out.vocab));
            logits.push(out.data);
        }
        assert!(logits[0] == logits[1], "{} on {kind:?}: in-place reordering differs from a gather", dir.display());
        // The rows that took different sources see different caches: the check can tell rows apart.
        let vocab = logits[0].len() / 4;
        assert!(logits[0][..vocab] != logits[0][vocab..2 * vocab], "{} on {kind:?}", dir.display());
    }
}
