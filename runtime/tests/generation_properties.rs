//! The generation driver's contract as a property (the fuzz target `generate_settings` checks
//! the same one for as long as it runs): any settings × any logits a model could return (NaN,
//! ±inf, ties, rows all equal) are refused with an error naming a field, or generate within their
//! length bound. A small case count keeps it fast in `cargo test`.

use gpt2c_runtime::playback::{Outcome, generation_invariant};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Mostly ordinary counts, sometimes one that probes a range check.
fn count() -> impl Strategy<Value = Value> {
    prop_oneof![9 => (0u64..7).prop_map(|v| json!(v)), 1 => extreme_count()]
}

/// Mostly ordinary floats, sometimes one that probes a range check.
fn float() -> impl Strategy<Value = Value> {
    prop_oneof![9 => (0.0f64..2.0).prop_map(|v| json!(v)), 1 => extreme_float()]
}

/// Values that probe every range check: zero, one, small, large, past 2^32, negative.
fn extreme_count() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(3)),
        Just(json!(4)),
        Just(json!(8)),
        Just(json!(70_000)),
        Just(json!(5_000_000_000u64)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
    ]
}

fn extreme_float() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0.0)),
        Just(json!(1e-30)),
        Just(json!(0.05)),
        Just(json!(0.5)),
        Just(json!(0.9)),
        Just(json!(1.0)),
        Just(json!(1.5)),
        Just(json!(-1.0)),
        Just(json!(1e30)),
        Just(json!(1e300)),
    ]
}

fn ids() -> impl Strategy<Value = Value> {
    prop::collection::vec(0u32..40, 0..6).prop_map(|v| json!(v))
}

/// One setting with a value of its kind (or, sometimes, of the wrong kind).
fn setting() -> impl Strategy<Value = (String, Value)> {
    let counts = prop::sample::select(vec![
        "max_length",
        "max_new_tokens",
        "min_length",
        "min_new_tokens",
        "num_beams",
        "num_beam_groups",
        "num_return_sequences",
        "top_k",
        "no_repeat_ngram_size",
    ]);
    let floats = prop::sample::select(vec![
        "temperature",
        "top_p",
        "min_p",
        "typical_p",
        "epsilon_cutoff",
        "eta_cutoff",
        "diversity_penalty",
        "repetition_penalty",
        "length_penalty",
        "max_time",
    ]);
    let flags = prop::sample::select(vec!["do_sample", "renormalize_logits", "remove_invalid_values"]);
    let lists =
        prop::sample::select(vec!["suppress_tokens", "begin_suppress_tokens", "eos_token_id", "forced_eos_token_id"]);
    prop_oneof![
        4 => (counts, count()).prop_map(|(k, v)| (k.to_string(), v)),
        4 => (floats, float()).prop_map(|(k, v)| (k.to_string(), v)),
        2 => (flags, any::<bool>()).prop_map(|(k, v)| (k.to_string(), json!(v))),
        2 => (lists, ids()).prop_map(|(k, v)| (k.to_string(), v)),
        1 => (0u32..45).prop_map(|t| ("pad_token_id".to_string(), json!(t))),
        1 => (0u32..45).prop_map(|t| ("forced_bos_token_id".to_string(), json!(t))),
        1 => prop::collection::vec(prop::collection::vec(0u32..40, 0..3), 0..3)
            .prop_map(|w| ("bad_words_ids".to_string(), json!(w))),
        1 => prop::sample::select(vec![json!(true), json!(false), json!("never"), json!(3)])
            .prop_map(|v| ("early_stopping".to_string(), v)),
        1 => any::<u64>().prop_map(|s| ("seed".to_string(), json!(s))),
        1 => (count(), float()).prop_map(|(s, f)| ("exponential_decay_length_penalty".to_string(), json!([s, f]))),
    ]
}

/// Logits a broken export could return: ordinary values, ties, NaN and infinities.
fn logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -8.0f32..8.0,
        2 => Just(1.0f32),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(3.0e38f32),
    ]
}

/// Logits of a working model (finite, with ties) most of the time; a broken one's otherwise.
fn logits() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        3 => prop::collection::vec(prop_oneof![4 => -8.0f32..8.0, 1 => Just(1.0f32)], 1..200),
        1 => prop::collection::vec(logit(), 1..200),
    ]
}

/// One to three prompts of one to six tokens, mostly inside the vocabulary.
fn prompts(vocab: u32) -> impl Strategy<Value = Vec<Vec<u32>>> {
    let token = prop_oneof![19 => 0..vocab, 1 => vocab..vocab + 3];
    let prompt = prop_oneof![19 => prop::collection::vec(token, 1..6), 1 => Just(Vec::new())];
    prop::collection::vec(prompt, 1..3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn settings_are_refused_by_name_or_generate_within_their_bound(
        settings in prop::collection::vec(setting(), 0..6),
        (vocab, prompts) in (1u32..40).prop_flat_map(|v| (Just(v as usize), prompts(v))),
        n_positions in 1usize..24,
        values in logits(),
    ) {
        let object: Map<String, Value> = settings.into_iter().collect();
        let text = Value::Object(object).to_string();
        match generation_invariant(&text, vocab, n_positions, &prompts, values) {
            Ok(Outcome::NotSettings) => prop_assert!(false, "a JSON object was not read as settings"),
            Ok(Outcome::Refused(field)) => prop_assert!(!field.is_empty()),
            Ok(Outcome::Generated(n)) => prop_assert!(n >= 1),
            Err(violation) => prop_assert!(false, "{violation}\nsettings: {text}"),
        }
    }
}

/// The property can fail: a broken bound is reported, not accepted (here the context of one
/// position leaves no room, and the refusal names what to change).
#[test]
fn a_prompt_that_fills_the_context_is_refused_by_name() {
    let out = generation_invariant("{}", 10, 3, &[vec![1, 2, 3]], vec![0.5]).unwrap();
    assert_eq!(out, Outcome::Refused("max_length".into()));
    let out = generation_invariant(r#"{"max_new_tokens": 2}"#, 10, 8, &[vec![1, 2, 3]], vec![0.5, 1.5]).unwrap();
    assert_eq!(out, Outcome::Generated(1));
}
