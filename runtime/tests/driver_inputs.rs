//! The driver on inputs that used to crash it: beam sampling with fewer live candidates than
//! beams, every token suppressed, NaN and infinite logits, counts whose products pass the limits,
//! durations past the clock's range; and `max_time` on a stand-in clock.

use std::cell::Cell;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use gpt2c_runtime::generate::{
    Clock, FinishReason, GenerateError, GenerationConfig, GenerationOutput, ModelLimits, check, generate,
    generate_with_clock,
};
use gpt2c_runtime::playback::PlaybackSession;

const VOCAB: usize = 40;

fn config(settings: Value) -> GenerationConfig {
    let o: Map<String, Value> = settings.as_object().cloned().unwrap_or_default();
    GenerationConfig::from_json(&Map::new(), &o).unwrap()
}

/// Distinct, spread logits (no ties), shifted each row so the choices vary.
fn spread(rows: usize) -> Vec<f32> {
    (0..rows * VOCAB).map(|i| ((i * 7919) % 97) as f32 * 0.1).collect()
}

fn run(settings: Value, values: Vec<f32>) -> Result<GenerationOutput, GenerateError> {
    let mut s = PlaybackSession::new(VOCAB, values);
    generate(&mut s, ModelLimits::new(VOCAB, 64), &[vec![1, 2, 3]], &config(settings), None, &mut |_, _| {})
}

#[test]
fn beam_sampling_with_fewer_candidates_than_beams_returns_the_live_ones() {
    // top_k 2 keeps 2 tokens per beam (min_keep is 2 with beams); at the first step only beam 0
    // is alive, so 2 candidates exist where K = 8 are drawn.
    for (beams, top_k, returned) in [(4usize, 2usize, 4usize), (8, 2, 8), (64, 50, 10), (4, 1, 2)] {
        let settings = json!({
            "do_sample": true, "num_beams": beams, "top_k": top_k, "num_return_sequences": returned,
            "max_new_tokens": 6, "seed": 3, "eos_token_id": 39,
        });
        let out = run(settings, spread(7)).unwrap_or_else(|e| panic!("{beams} beams, top_k {top_k}: {e}"));
        assert!(!out.results.is_empty() && out.results.len() <= returned, "{} results", out.results.len());
        assert_eq!(out.sequences.len(), out.results.len());
        let scores: Vec<f32> = out.results.iter().map(|r| r.score.unwrap()).collect();
        assert!(scores.iter().all(|s| s.is_finite()), "dead hypotheses returned: {scores:?}");
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
        for r in &out.results {
            assert!(!r.tokens.is_empty() && r.tokens.len() <= 6, "{:?}", r.tokens);
        }
    }
}

#[test]
fn every_token_suppressed_names_the_setting() {
    let all: Vec<u32> = (0..VOCAB as u32).collect();
    for mode in [
        json!({}),
        json!({"do_sample": true, "seed": 1}),
        json!({"num_beams": 3}),
        json!({"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0}),
    ] {
        let mut settings = mode.clone();
        settings["suppress_tokens"] = json!(all);
        settings["max_new_tokens"] = json!(4);
        let err = run(settings, spread(5)).unwrap_err();
        assert_eq!(err.param(), Some("suppress_tokens"), "{mode}: {err}");
        assert!(err.to_string().contains("no token to choose"), "{err}");
    }
    // Suppressing the only token forced_bos leaves: the later processor is named (bad words run
    // before forced BOS, which overrides them, as in transformers).
    let settings =
        json!({"forced_bos_token_id": 5, "suppress_tokens": [5], "bad_words_ids": [[6]], "max_new_tokens": 3});
    let mut s = PlaybackSession::new(VOCAB, spread(3));
    let err =
        generate(&mut s, ModelLimits::new(VOCAB, 64), &[vec![1]], &config(settings), None, &mut |_, _| {}).unwrap_err();
    assert_eq!(err.param(), Some("suppress_tokens"), "{err}");
    let settings = json!({"forced_bos_token_id": 5, "bad_words_ids": [[5]], "max_new_tokens": 3});
    let mut s = PlaybackSession::new(VOCAB, spread(3));
    let out =
        generate(&mut s, ModelLimits::new(VOCAB, 64), &[vec![1]], &config(settings), None, &mut |_, _| {}).unwrap();
    assert_eq!(out.results[0].tokens[0], 5, "forced BOS wins over bad words");
}

#[test]
fn non_finite_logits_name_the_export_unless_replaced() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut values = spread(1);
        values[7] = bad;
        for mode in [json!({}), json!({"do_sample": true, "seed": 1}), json!({"num_beams": 2})] {
            let mut settings = mode.clone();
            settings["max_new_tokens"] = json!(3);
            let err = run(settings.clone(), values.clone()).unwrap_err();
            assert!(matches!(err, GenerateError::InvalidLogits { token: 7, .. }), "{mode}: {err}");
            assert_eq!(err.param(), None);
            assert!(err.to_string().contains("remove_invalid_values"), "{err}");
            settings["remove_invalid_values"] = json!(true);
            let out =
                run(settings, values.clone()).unwrap_or_else(|e| panic!("{mode} with remove_invalid_values: {e}"));
            assert!(!out.results.is_empty());
        }
    }
}

#[test]
fn scores_that_overflow_name_the_setting() {
    // Logits of 1e30 divided by a temperature of 1e-20 pass f32's range.
    let values: Vec<f32> = (0..VOCAB).map(|i| i as f32 * 1e30).collect();
    let err =
        run(json!({"do_sample": true, "temperature": 1e-20, "top_k": 0, "max_new_tokens": 2}), values).unwrap_err();
    assert_eq!(err.param(), Some("temperature"), "{err}");
    assert!(err.to_string().contains("NaN or infinite"), "{err}");
}

#[test]
fn counts_past_the_limits_are_refused_before_allocation() {
    let limits = ModelLimits { vocab_size: 50257, n_positions: 1024, cache_bytes_per_position: 147_456, n_head: 12 };
    let prompts = [vec![1u32, 2, 3]];
    let cases = [
        (json!({"do_sample": true, "num_return_sequences": 4_000_000_000u64}), "num_return_sequences"),
        (json!({"num_beams": 3_000_000_000u64}), "num_beams"),
        (json!({"num_beams": 5000, "max_new_tokens": 1000}), "num_beams"),
        (json!({"max_new_tokens": 5_000_000_000u64}), "max_new_tokens"),
        (json!({"min_new_tokens": u64::MAX}), "min_new_tokens"),
        (json!({"exponential_decay_length_penalty": [u64::MAX, 1.5]}), "exponential_decay_length_penalty"),
        (json!({"max_time": -1.0}), "max_time"),
    ];
    for (settings, field) in cases {
        let err = GenerationConfig::from_json(&Map::new(), settings.as_object().unwrap())
            .and_then(|c| check(limits, &prompts, &c, None))
            .unwrap_err();
        assert_eq!(err.param(), Some(field), "{settings}: {err}");
    }
    // 4,000 beams of a gpt2-small-sized cache at 1,024 positions: ~560 GiB, past this machine.
    let c = config(json!({"num_beams": 4000, "max_new_tokens": 1021}));
    let err = check(limits, &prompts, &c, None).unwrap_err();
    assert!(err.to_string().contains("GiB"), "{err}");
}

#[test]
fn a_time_budget_past_the_clock_saturates_and_never_fires() {
    let out = run(json!({"max_time": 1e300, "max_new_tokens": 5}), spread(6)).unwrap();
    assert_eq!(out.results[0].finish_reason, FinishReason::Length);
    assert_eq!(out.results[0].tokens.len(), 5);
}

/// A clock that moves one second each time it is read.
struct Ticking {
    start: Instant,
    reads: Cell<u32>,
}

impl Clock for Ticking {
    fn now(&self) -> Instant {
        let n = self.reads.get();
        self.reads.set(n + 1);
        self.start + Duration::from_secs(u64::from(n))
    }
}

#[test]
fn max_time_stops_at_the_deadline_with_finish_reason_time() {
    // The deadline is taken at read 0 (+3.5 s); the check after token k reads the clock at +k s.
    let clock = Ticking { start: Instant::now(), reads: Cell::new(0) };
    let mut s = PlaybackSession::new(VOCAB, spread(20));
    let c = config(json!({"max_time": 3.5, "max_new_tokens": 20}));
    let out = generate_with_clock(&mut s, ModelLimits::new(VOCAB, 64), &[vec![1, 2]], &c, None, &clock, &mut |_, _| {})
        .unwrap();
    assert_eq!(out.results[0].finish_reason, FinishReason::Time);
    assert_eq!(out.results[0].tokens.len(), 4);
    // Beam search stops on time too.
    let clock = Ticking { start: Instant::now(), reads: Cell::new(0) };
    let c = config(json!({"max_time": 2.5, "max_new_tokens": 20, "num_beams": 2}));
    let mut s = PlaybackSession::new(VOCAB, spread(20));
    let out = generate_with_clock(&mut s, ModelLimits::new(VOCAB, 64), &[vec![1, 2]], &c, None, &clock, &mut |_, _| {})
        .unwrap();
    assert!(
        out.results.iter().all(|r| r.finish_reason == FinishReason::Time && r.tokens.len() < 20),
        "{:?}",
        out.results
    );
}

#[test]
fn errors_name_their_field_for_programs() {
    let err = run(json!({"top_p": 2.0}), spread(1)).unwrap_err();
    assert_eq!(err.param(), Some("top_p"));
    let mut s = PlaybackSession::new(VOCAB, spread(1));
    let err =
        generate(&mut s, ModelLimits::new(VOCAB, 64), &[vec![]], &config(json!({})), None, &mut |_, _| {}).unwrap_err();
    assert_eq!(err.param(), Some("prompt"));
    // A session whose logits are not the model's vocabulary is refused, not indexed.
    let mut s = PlaybackSession::new(VOCAB + 1, spread(2));
    let err = generate(&mut s, ModelLimits::new(VOCAB, 64), &[vec![1]], &config(json!({})), None, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(err, GenerateError::VocabMismatch { got: 41, expected: 40 }), "{err}");
}
