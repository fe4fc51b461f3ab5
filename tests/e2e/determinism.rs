//! The same checkpoint and options give byte-identical export folders.

use std::collections::BTreeMap;
use std::path::Path;

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::onnx::ExternalData;
use gpt2c_tests::export_fixture;

fn folder_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn exporting_twice_gives_identical_bytes() {
    for external_data in [ExternalData::Never, ExternalData::Always] {
        let options = ExportOptions { external_data, ..Default::default() };
        let (_t1, first) = export_fixture("tiny-scaled-attn", &options);
        let (_t2, second) = export_fixture("tiny-scaled-attn", &options);
        let (a, b) = (folder_bytes(&first), folder_bytes(&second));
        assert!(a.contains_key("model.onnx"));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, bytes) in &a {
            assert!(bytes == &b[name], "{name} differs between two exports ({external_data:?})");
        }
    }
}

/// Weights stored as f16 and sharded files still export deterministically
/// (the widening and shard order are part of the output).
#[test]
fn converted_and_sharded_exports_are_deterministic() {
    for name in ["tiny-default-f16", "tiny-default-sharded"] {
        let (_t1, first) = export_fixture(name, &ExportOptions::default());
        let (_t2, second) = export_fixture(name, &ExportOptions::default());
        assert_eq!(folder_bytes(&first), folder_bytes(&second), "{name}");
    }
}
