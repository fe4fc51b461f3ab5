use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::*;

/// Agreement required with transformers' fp32 outputs.
const TOLERANCE: f32 = 1e-5;

type Tensors = BTreeMap<String, HostTensor>;
type Inputs = Vec<(String, HostTensor)>;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// Every tensor of `dir/reference.safetensors` (written by models/make_*fixtures.py).
fn reference(dir: &Path) -> Tensors {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let (shape, data) = (view.shape().to_vec(), view.data());
            let tensor = match view.dtype() {
                Dtype::F32 => HostTensor::f32(
                    shape,
                    data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                ),
                Dtype::I64 => HostTensor::i64(
                    shape,
                    data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
                ),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, tensor.unwrap())
        })
        .collect()
}

fn model(dir: &Path, task: Task) -> ReferenceModel {
    let ckpt = Checkpoint::open(dir).unwrap();
    ReferenceModel::load(&ckpt, task).unwrap()
}

fn get<'t>(refs: &'t Tensors, name: &str) -> &'t HostTensor {
    refs.get(name).unwrap_or_else(|| panic!("no `{name}` in the reference file"))
}

/// `refs[{prefix}{name}]` as input `name`, for each name.
fn take(refs: &Tensors, prefix: &str, names: &[&str]) -> Inputs {
    names.iter().map(|n| (n.to_string(), get(refs, &format!("{prefix}{n}")).clone())).collect()
}

/// An f32 tensor of zeros (empty when a dimension is 0).
fn zeros(shape: Vec<usize>) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::f32(shape, vec![0.0; n]).unwrap()
}

/// Per layer, past key and value inputs: `refs[{from}present.{i}.key]`... or empty ones.
fn pasts(m: &ReferenceModel, refs: &Tensors, from: Option<&str>, batch: usize, cross: bool) -> Inputs {
    let c = &m.config;
    let mut out = Vec::new();
    for i in 0..c.n_layer {
        let names = if cross {
            [(contract::past_cross_key(i), "encoder.key"), (contract::past_cross_value(i), "encoder.value")]
        } else {
            [(contract::past_key(i), "key"), (contract::past_value(i), "value")]
        };
        for (name, kind) in names {
            let t = match from {
                Some(p) => get(refs, &format!("{p}present.{i}.{kind}")).clone(),
                None => zeros(vec![batch, c.n_head, 0, c.head_dim]),
            };
            out.push((name, t));
        }
    }
    out
}

/// Largest |actual − expected| over real-token elements and over all elements.
#[derive(Clone, Copy, Debug, Default)]
struct Errors {
    real: f32,
    all: f32,
}

impl Errors {
    fn max(self, o: Errors) -> Errors {
        Errors { real: self.real.max(o.real), all: self.all.max(o.all) }
    }
}

fn compare(actual: &HostTensor, expected: &HostTensor, real: &dyn Fn(&[usize]) -> bool) -> Errors {
    let (a, e) = (actual.as_f32().unwrap(), expected.as_f32().unwrap());
    let shape = &actual.shape;
    let mut index = vec![0; shape.len()];
    let mut errors = Errors::default();
    for flat in 0..a.len() {
        let mut rest = flat;
        for k in (0..shape.len()).rev() {
            index[k] = rest % shape[k];
            rest /= shape[k];
        }
        let d = (a[flat] - e[flat]).abs();
        let d = if d.is_nan() { f32::INFINITY } else { d };
        errors.all = errors.all.max(d);
        if real(&index) {
            errors.real = errors.real.max(d);
        }
    }
    errors
}

/// Runs `m` and compares each output `o` with `refs[{prefix}o]`; `real(o, index)` says whether an
/// element belongs to a real (unpadded) token.
fn step(
    m: &ReferenceModel,
    refs: &Tensors,
    prefix: &str,
    inputs: &[(String, HostTensor)],
    real: &dyn Fn(&str, &[usize]) -> bool,
) -> Errors {
    let named: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let outputs = m.run(&named).unwrap_or_else(|e| panic!("{prefix}: {e}"));
    let mut errors = Errors::default();
    for (name, actual) in &outputs {
        let expected = get(refs, &format!("{prefix}{name}"));
        assert_eq!(actual.shape, expected.shape, "{prefix}{name}");
        let e = compare(actual, expected, &|index| real(name, index));
        eprintln!("    {} {prefix}{name}: real {:.2e}, all {:.2e}", m.task.name(), e.real, e.all);
        errors = errors.max(e);
    }
    errors
}

/// Real-token elements by `mask` (`[lead.., past + sequence]`): `present.{i}.key/value`
/// `[batch, H, T, D]` by key slot; encoder presents everywhere; other outputs `[lead.., sequence, ..]`
/// by position.
fn by_mask(mask: &HostTensor, past: usize) -> impl Fn(&str, &[usize]) -> bool + '_ {
    let values = mask.as_i64().unwrap();
    let lead = mask.shape.len() - 1;
    let total = mask.shape[lead];
    move |name: &str, index: &[usize]| {
        if name.contains(".encoder.") {
            return true;
        }
        if name.starts_with("present.") {
            return values[index[0] * total + index[2]] != 0;
        }
        let row = index[..lead].iter().zip(&mask.shape).fold(0, |acc, (&i, &n)| acc * n + i);
        values[row * total + past + index[lead]] != 0
    }
}

/// Prints a fixture's errors and checks them: real tokens are what must agree; padding rows
/// agree as well because their fully masked attention is reproduced too.
fn report(fixture: &str, errors: Errors) {
    eprintln!("{fixture}: max abs error {:.2e} on real tokens, {:.2e} everywhere", errors.real, errors.all);
    assert!(errors.real <= TOLERANCE, "{fixture}: {:.3e} > {TOLERANCE:e} on real tokens", errors.real);
    assert!(errors.all <= TOLERANCE, "{fixture}: {:.3e} > {TOLERANCE:e} on padding", errors.all);
}

/// models/tiny-* (make_fixtures.py): a.* a prompt, b.* one more token fed a's presents, c.* a
/// left-padded batch; with past key/values, and a.*, c.* again without.
fn language_model_fixture(name: &str, reference_dir: &str) -> Errors {
    let dir = models().join(name);
    let refs = reference(&models().join(reference_dir));
    let with_past = model(&dir, Task::TextGenerationWithPast);
    let without = model(&dir, Task::TextGeneration);
    let mut errors = Errors::default();
    for (prefix, past_from) in [("a.", None), ("b.", Some("a.")), ("c.", None)] {
        let mut inputs = take(&refs, prefix, &["input_ids", "attention_mask", "position_ids"]);
        let (ids, mask) = (&inputs[0].1, &inputs[1].1);
        let (batch, past) = (ids.shape[0], mask.shape[1] - ids.shape[1]);
        let real = by_mask(get(&refs, &format!("{prefix}attention_mask")), past);
        inputs.extend(pasts(&with_past, &refs, past_from, batch, false));
        errors = errors.max(step(&with_past, &refs, prefix, &inputs, &real));
        if past_from.is_none() {
            inputs.truncate(3);
            errors = errors.max(step(&without, &refs, prefix, &inputs, &real));
        }
    }
    errors
}

#[test]
fn tiny_default_matches_transformers() {
    report("tiny-default", language_model_fixture("tiny-default", "tiny-default"));
}

#[test]
fn tiny_inner_gelu_matches_transformers() {
    report("tiny-inner-gelu", language_model_fixture("tiny-inner-gelu", "tiny-inner-gelu"));
}

#[test]
fn tiny_scaled_attn_matches_transformers() {
    report("tiny-scaled-attn", language_model_fixture("tiny-scaled-attn", "tiny-scaled-attn"));
}

#[test]
fn tiny_untied_matches_transformers() {
    report("tiny-untied", language_model_fixture("tiny-untied", "tiny-untied"));
}

#[test]
fn tiny_default_f16_and_bf16_weights_match_transformers() {
    report("tiny-default-f16", language_model_fixture("tiny-default-f16", "tiny-default-f16"));
    report("tiny-default-bf16", language_model_fixture("tiny-default-bf16", "tiny-default-bf16"));
}

#[test]
fn sharded_and_unprefixed_checkpoints_match_transformers() {
    report("tiny-default-sharded", language_model_fixture("tiny-default-sharded", "tiny-default"));
    report("tiny-base-noprefix", language_model_fixture("tiny-base-noprefix", "tiny-default"));
}

fn heads() -> PathBuf {
    models().join("heads")
}

#[test]
fn sequence_classification_matches_transformers() {
    for name in ["seq-cls", "seq-cls-nopad"] {
        let dir = heads().join(name);
        let refs = reference(&dir);
        let m = model(&dir, Task::TextClassification);
        let inputs = take(&refs, "", &["input_ids", "attention_mask"]);
        report(name, step(&m, &refs, "", &inputs, &|_, _| true));
    }
}

#[test]
fn token_classification_matches_transformers() {
    let dir = heads().join("tok-cls");
    let refs = reference(&dir);
    let m = model(&dir, Task::TokenClassification);
    let inputs = take(&refs, "", &["input_ids", "attention_mask"]);
    report("tok-cls", step(&m, &refs, "", &inputs, &by_mask(get(&refs, "attention_mask"), 0)));
}

#[test]
fn question_answering_matches_transformers() {
    let dir = heads().join("qa");
    let refs = reference(&dir);
    let m = model(&dir, Task::QuestionAnswering);
    let inputs = take(&refs, "", &["input_ids", "attention_mask"]);
    report("qa", step(&m, &refs, "", &inputs, &by_mask(get(&refs, "attention_mask"), 0)));
}

#[test]
fn multiple_choice_matches_transformers() {
    for name in ["double-heads", "double-heads-mean", "double-heads-last"] {
        let dir = heads().join(name);
        let refs = reference(&dir);
        let m = model(&dir, Task::MultipleChoice);
        let inputs = take(&refs, "", &["input_ids", "attention_mask", "mc_token_ids"]);
        let mask = get(&refs, "attention_mask");
        let tokens = by_mask(mask, 0);
        let (values, choices, seq) = (mask.as_i64().unwrap(), mask.shape[1], mask.shape[2]);
        let mc = get(&refs, "mc_token_ids").as_i64().unwrap();
        let real = |output: &str, index: &[usize]| match (output, m.config.summary.kind()) {
            // cls_index: the summarised token; first, last, mean: the position in every choice.
            ("mc_logits", Ok(SummaryType::ClsIndex)) => {
                let row = index[0] * choices + index[1];
                values[row * seq + mc[row] as usize] != 0
            }
            ("mc_logits", _) => (0..choices).all(|ch| values[(index[0] * choices + ch) * seq + index[1]] != 0),
            _ => tokens(output, index),
        };
        report(name, step(&m, &refs, "", &inputs, &real));
    }
}

#[test]
fn base_model_matches_transformers() {
    let dir = heads().join("base");
    let refs = reference(&dir);
    let plain = model(&dir, Task::FeatureExtraction);
    let inputs = take(&refs, "p.", &["input_ids", "attention_mask"]);
    let mut errors = step(&plain, &refs, "p.", &inputs, &by_mask(get(&refs, "p.attention_mask"), 0));
    let cached = model(&dir, Task::FeatureExtractionWithPast);
    for (prefix, from, past) in [("q.", None, 0), ("r.", Some("q."), 6)] {
        let mut inputs = take(&refs, prefix, &["input_ids", "attention_mask", "position_ids"]);
        inputs.extend(pasts(&cached, &refs, from, 1, false));
        let real = by_mask(get(&refs, &format!("{prefix}attention_mask")), past);
        errors = errors.max(step(&cached, &refs, prefix, &inputs, &real));
    }
    report("base", errors);
}

#[test]
fn cross_attention_matches_transformers() {
    let dir = heads().join("cross");
    let refs = reference(&dir);
    let cached = model(&dir, Task::TextGenerationWithPast);
    let names = ["input_ids", "attention_mask", "position_ids"];
    let encoder = ["encoder_hidden_states", "encoder_attention_mask"];
    // x.*: the prompt with the encoder states and empty caches.
    let mut inputs = take(&refs, "x.", &names);
    inputs.extend(pasts(&cached, &refs, None, 2, false));
    inputs.extend(take(&refs, "x.", &encoder));
    inputs.extend(pasts(&cached, &refs, None, 2, true));
    let real = by_mask(get(&refs, "x.attention_mask"), 0);
    let mut errors = step(&cached, &refs, "x.", &inputs, &real);
    // Without a cache: the same logits.
    let plain = model(&dir, Task::TextGeneration);
    let mut inputs = take(&refs, "x.", &names);
    inputs.extend(take(&refs, "x.", &encoder));
    errors = errors.max(step(&plain, &refs, "x.", &inputs, &real));
    // y.*: one more token; the encoder keys and values come from x's cache, the states are empty.
    let mut inputs = take(&refs, "y.", &names);
    inputs.extend(pasts(&cached, &refs, Some("x."), 2, false));
    inputs.push(("encoder_hidden_states".into(), zeros(vec![2, 0, cached.config.n_embd])));
    inputs.extend(take(&refs, "y.", &["encoder_attention_mask"]));
    inputs.extend(pasts(&cached, &refs, Some("x."), 2, true));
    let real = by_mask(get(&refs, "y.attention_mask"), 6);
    errors = errors.max(step(&cached, &refs, "y.", &inputs, &real));
    report("cross", errors);
}

#[test]
fn config_variants_match_transformers() {
    let dir = heads().join("variants");
    let refs = reference(&dir);
    let m = model(&dir, Task::TextGeneration);
    let inputs = take(&refs, "", &["input_ids", "attention_mask", "position_ids"]);
    report("variants", step(&m, &refs, "", &inputs, &|_, _| true));
}

#[test]
fn every_activation_matches_transformers() {
    for name in Activation::NAMES {
        let dir = heads().join(format!("act-{name}"));
        let refs = reference(&dir);
        let m = model(&dir, Task::TextGeneration);
        assert_eq!(m.config.activation_name, name);
        let inputs = take(&refs, "", &["input_ids", "attention_mask", "position_ids"]);
        report(&format!("act-{name}"), step(&m, &refs, "", &inputs, &|_, _| true));
    }
}

/// The error of running `m` on `inputs`.
fn run_error(m: &ReferenceModel, inputs: &[(String, HostTensor)]) -> String {
    let named: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    match m.run(&named) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_are_refused_with_readable_messages() {
    let dir = models().join("tiny-default");
    let refs = reference(&dir);
    let m = model(&dir, Task::TextGenerationWithPast);
    let mut good = take(&refs, "a.", &["input_ids", "attention_mask", "position_ids"]);
    good.extend(pasts(&m, &refs, None, 1, false));
    let with = |name: &str, t: HostTensor| -> Inputs {
        good.iter().map(|(n, old)| (n.clone(), if n == name { t.clone() } else { old.clone() })).collect()
    };
    let cases: Vec<(Inputs, &[&str])> = vec![
        (good[1..].to_vec(), &["input `input_ids` is missing", "past_key_values.0.key"]),
        (
            [good.clone(), vec![("token_type_ids".into(), good[0].1.clone())]].concat(),
            &["`token_type_ids` is not an input of the text-generation-with-past export"],
        ),
        ([good.clone(), vec![good[0].clone()]].concat(), &["`input_ids` is given more than once"]),
        (with("input_ids", HostTensor::f32(vec![1, 7], vec![0.0; 7]).unwrap()), &["holds float, expected int64"]),
        (with("input_ids", HostTensor::i64(vec![1, 7], vec![1000; 7]).unwrap()), &["token id 1000", "vocab_size 1000"]),
        (with("position_ids", HostTensor::i64(vec![1, 7], vec![64; 7]).unwrap()), &["position 64", "0..64"]),
        (
            with("input_ids", HostTensor { shape: vec![1, 7], data: HostData::I64(vec![1; 3]) }),
            &["holds 3 values", "[1, 7] needs 7"],
        ),
        (
            with("attention_mask", HostTensor::i64(vec![1, 6], vec![1; 6]).unwrap()),
            &["[1, 7]", "past_sequence_length 0"],
        ),
        (
            with("past_key_values.1.value", zeros(vec![1, 4, 2, 8])),
            &["past_key_values.1.value", "past length 2 differs from past_key_values.0.key's 0"],
        ),
        (with("past_key_values.0.key", zeros(vec![1, 3, 0, 8])), &["[1, 4, past length, 8]"]),
    ];
    for (inputs, needles) in cases {
        let e = run_error(&m, &inputs);
        assert!(needles.iter().all(|n| e.contains(n)), "{e}");
    }

    let nopad = heads().join("seq-cls-nopad");
    let m = model(&nopad, Task::TextClassification);
    let ids = HostTensor::i64(vec![2, 3], vec![1; 6]).unwrap();
    let e = run_error(&m, &[("input_ids".into(), ids.clone()), ("attention_mask".into(), ids)]);
    assert!(e.contains("no pad_token_id"), "{e}");

    let dir = heads().join("double-heads");
    let refs = reference(&dir);
    let m = model(&dir, Task::MultipleChoice);
    let mut inputs = take(&refs, "", &["input_ids", "attention_mask"]);
    inputs.push(("mc_token_ids".into(), HostTensor::i64(vec![2, 3], vec![0, 1, 6, 0, 0, 0]).unwrap()));
    let e = run_error(&m, &inputs);
    assert!(e.contains("mc_token_ids") && e.contains("index 6") && e.contains("0..6"), "{e}");
}

#[test]
fn float16_caches_are_widened() {
    let dir = models().join("tiny-default");
    let refs = reference(&dir);
    let m = model(&dir, Task::TextGenerationWithPast);
    let mut inputs = take(&refs, "b.", &["input_ids", "attention_mask", "position_ids"]);
    for (name, past) in pasts(&m, &refs, Some("a."), 1, false) {
        let halves = past.as_f32().unwrap().iter().map(|&v| half::f16::from_f32(v)).collect();
        inputs.push((name, HostTensor { shape: past.shape.clone(), data: HostData::F16(halves) }));
    }
    let named: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let outputs = m.run(&named).unwrap();
    let e = compare(&outputs[0].1, get(&refs, "b.logits"), &|_| true);
    assert!(e.all < 0.05, "{e:?}");
}

#[test]
fn a_head_without_its_weights_is_named() {
    let ckpt = Checkpoint::open(&models().join("tiny-default")).unwrap();
    let e = ReferenceModel::load(&ckpt, Task::TextClassification).err().unwrap().to_string();
    assert!(e.contains("score.weight"), "{e}");
}

#[test]
fn erf_matches_known_values() {
    // mpmath at 30 digits, rounded to f64.
    let known = [
        (0.0, 0.0),
        (1e-3, 0.0011283787909692364),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (-1.5, -0.9661051464753108),
        (2.0, 0.9953222650189527),
        (3.0, 0.9999779095030014),
        (4.5, 0.9999999998033839),
        (5.9, 0.9999999999999999),
        (7.0, 1.0),
    ];
    for (x, want) in known {
        let got = erf(x);
        assert!((got - want).abs() <= 1e-15 * want.abs().max(1e-300) + 1e-300, "erf({x}) = {got}, want {want}");
    }
    assert!(erf(f64::NAN).is_nan());
}
