//! A prompt in a left-padded batch yields the same tokens as the same prompt alone.

use gpt2c_compiler::ExportOptions;
use gpt2c_runtime::generate::GenerationConfig;
use gpt2c_runtime::{ExportedModel, RunnerOptions, generate};
use gpt2c_tests::{backends, export_fixture};
use serde_json::{Value, json};

#[test]
fn batched_prompts_match_single_prompts() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    let model = ExportedModel::open(&out).unwrap();
    let tokenizer = model.tokenizer().unwrap();
    let limits = model.config.limits();
    let prompts: Vec<Vec<u32>> = ["The quick brown fox jumps over", "Hello", "A short one, then"]
        .iter()
        .map(|t| tokenizer.encode(t).unwrap())
        .collect();
    assert!(prompts.iter().map(Vec::len).collect::<std::collections::BTreeSet<_>>().len() == 3);
    for settings in
        [json!({"max_new_tokens": 10}), json!({"max_new_tokens": 8, "num_beams": 3, "num_return_sequences": 2})]
    {
        let o = settings.as_object().unwrap().clone();
        let config = GenerationConfig::from_json(&model.generation_json, &o).unwrap();
        for kind in backends() {
            let mut session = model.session(kind, &RunnerOptions::default()).unwrap();
            let batched = generate(session.as_mut(), limits, &prompts, &config, None, &mut |_, _| {}).unwrap();
            for (i, p) in prompts.iter().enumerate() {
                let alone =
                    generate(session.as_mut(), limits, std::slice::from_ref(p), &config, None, &mut |_, _| {}).unwrap();
                let from_batch: Vec<&Vec<u32>> =
                    batched.results.iter().filter(|r| r.prompt == i).map(|r| &r.tokens).collect();
                let single: Vec<&Vec<u32>> = alone.results.iter().map(|r| &r.tokens).collect();
                assert_eq!(from_batch, single, "{} {}: prompt {i}", kind.name(), Value::from(o.clone()));
            }
        }
    }
}
