//! Processors the generation fixtures cannot pin down, against transformers' own classes on fixed
//! scores (`models/processors/processors.json`, made by `models/make_processor_fixtures.py`):
//! typical_p, epsilon_cutoff and eta_cutoff (with min_tokens_to_keep 1 and 2), forced_bos_token_id
//! and remove_invalid_values. The kept set must be the same token for token, and every value within
//! 1e-6. (`max_time` is tested with a stand-in clock beside the driver.)

use std::path::Path;

use gpt2c_runtime::generate::GenerationConfig;
use gpt2c_runtime::generate::processors::{Pipeline, PipelineLimits};
use serde_json::{Map, Value};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("a list of scores")
        .iter()
        .map(|x| match x {
            Value::String(s) if s == "nan" => f32::NAN,
            Value::String(s) if s == "inf" => f32::INFINITY,
            Value::String(s) if s == "-inf" => f32::NEG_INFINITY,
            other => other.as_f64().expect("a number") as f32,
        })
        .collect()
}

#[test]
fn processors_match_transformers_on_fixed_scores() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/processors/processors.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 13, "the fixture's cases");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let settings: Map<String, Value> = case["settings"].as_object().unwrap().clone();
        let config = GenerationConfig::from_json(&Map::new(), &settings).unwrap();
        config.validate(doc["vocab"].as_u64().unwrap() as usize).unwrap();
        let tokens: Vec<u32> =
            case["input_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let limits = PipelineLimits { prompt_len: tokens.len(), max_length: 1000, min_length: 0 };
        let pipeline = Pipeline::new(&config, &limits);
        // The settings build exactly the processor the case is about.
        let built: Vec<&str> = pipeline.processors.iter().map(|p| p.setting()).collect();
        let setting =
            settings.keys().find(|k| !["do_sample", "top_k", "num_beams", "eos_token_id"].contains(&k.as_str()));
        assert_eq!(built, vec![setting.unwrap().as_str()], "{name}");

        let mut scores = floats(&case["scores"]);
        let want = floats(&case["processed"]);
        assert_eq!(scores.len(), want.len(), "{name}");
        pipeline.apply(&tokens, &mut scores, &[]);
        let kept: Vec<usize> = (0..scores.len()).filter(|&i| scores[i].is_finite()).collect();
        let want_kept: Vec<usize> = (0..want.len()).filter(|&i| want[i].is_finite()).collect();
        assert_eq!(kept, want_kept, "{name}: kept tokens");
        assert_eq!(kept.len() as u64, case["kept"].as_u64().unwrap(), "{name}");
        for (i, (got, want)) in scores.iter().zip(&want).enumerate() {
            let same = if want.is_finite() { (got - want).abs() <= 1e-6 * want.abs().max(1.0) } else { got == want };
            assert!(same, "{name}: token {i}: {got} vs transformers' {want}");
        }
    }
}
