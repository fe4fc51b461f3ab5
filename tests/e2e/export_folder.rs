//! The export folder is self-contained: config copied byte for byte,
//! generation_config.json copied or derived as transformers derives it, and
//! the tokenizer files carried along.

use gpt2c_compiler::ExportOptions;
use gpt2c_tests::{export_fixture, fixture};

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn side_files_are_copied() {
    let (_tmp, out) = export_fixture("tiny-default", &ExportOptions::default());
    for name in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"] {
        let (a, b) =
            (std::fs::read(out.join(name)).unwrap(), std::fs::read(fixture("tiny-default").join(name)).unwrap());
        assert!(a == b, "{name} differs from the checkpoint's");
    }
    assert!(!out.join("reference.safetensors").exists(), "only model and tokenizer files are carried");
}

#[test]
fn generation_config_is_derived_like_transformers_when_absent() {
    assert!(!fixture("tiny-base-noprefix").join("generation_config.json").exists());
    let (_tmp, out) = export_fixture("tiny-base-noprefix", &ExportOptions::default());
    let expected = json(&fixture("tiny-base-noprefix").join("expected_generation_config.json"));
    assert_eq!(json(&out.join("generation_config.json")), expected);
}
