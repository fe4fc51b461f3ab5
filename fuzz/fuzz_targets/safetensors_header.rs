//! Arbitrary bytes as a whole `model.safetensors`: the header parses or fails with an error, and
//! every tensor it accepts is read the way the loader reads it (a view checked against its
//! shape, widened to f32 for F16/BF16).
#![no_main]

use std::path::Path;

use gpt2c_compiler::checkpoint::safetensors::{SafetensorsFile, StDtype, parse_header};
use gpt2c_compiler::checkpoint::{WeightSource, Weights};
use gpt2c_compiler::ir::SharedBytes;
use libfuzzer_sys::fuzz_target;

/// The loader's `SafetensorsWeights` over one in-memory file.
struct OneFile(SafetensorsFile);

impl WeightSource for OneFile {
    fn names(&self) -> Vec<String> {
        self.0.tensors().keys().cloned().collect()
    }
    fn info(&self, name: &str) -> Option<(StDtype, Vec<usize>)> {
        self.0.tensors().get(name).map(|t| (t.dtype, t.shape.clone()))
    }
    fn bytes(&self, name: &str) -> Option<SharedBytes> {
        self.0.bytes(self.0.tensors().get(name)?)
    }
    fn origin(&self, _name: &str) -> String {
        self.0.path().display().to_string()
    }
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("model.safetensors");
    let header = parse_header(path, data);
    let file = match SafetensorsFile::from_bytes(path, data.to_vec()) {
        Ok(file) => file,
        Err(e) => {
            assert!(header.is_err());
            assert!(e.to_string().starts_with("model.safetensors: "), "{e}");
            return;
        }
    };
    assert_eq!(header.map(|t| t.len()).ok(), Some(file.tensors().len()));
    for (name, info) in file.tensors() {
        // Accepted shapes have products that fit: parse_header checked them with checked_mul.
        let numel: usize = info.shape.iter().product();
        assert_eq!(info.range.len(), numel * info.dtype.size(), "{name}");
        let bytes = file.bytes(info).expect("an accepted range lies inside the file");
        assert_eq!(bytes.len(), info.range.len());
    }
    let weights = Weights::new(std::sync::Arc::new(OneFile(file)));
    for name in weights.source().names() {
        let Some((dtype, shape)) = weights.source().info(&name) else { continue };
        match weights.get(&name, &shape) {
            Ok(tensor) => {
                assert!(matches!(dtype, StDtype::F32 | StDtype::F16 | StDtype::BF16));
                let values = tensor.to_f32_vec().expect("f32 tensors convert");
                assert_eq!(values.len(), tensor.numel(), "{name}");
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
