//! Arbitrary bytes as `model.onnx`: decoding succeeds or fails with an error, and a decoded model
//! goes through what gpt2c does with a model it reads: re-encoding, the runtime's structural
//! split and in-place specialization (`gpt2c generate`), and `gpt2c verify`'s model-only checks.
#![no_main]

use gpt2c_verify::{infer, structure};
use gpt2c_proto::{self as pb, splice};
use gpt2c_runtime::specialize::{Edits, specialize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let model = pb::decode_model(data);
    if let Ok(model) = &model {
        // Encoding is deterministic and a fixed point after one decode (bytes, not `==`: NaN floats).
        let encoded = pb::encode_model(model);
        let again = pb::decode_model(&encoded).expect("our own encoding decodes");
        assert_eq!(pb::encode_model(&again), encoded);
    }
    if let Ok(parts) = splice::split(data) {
        for tensor in &parts.initializers {
            if let Ok((_, Some(raw))) = splice::tensor_header(tensor) {
                assert!(raw.end <= tensor.len());
            }
        }
        let joined = splice::join(&parts.model, &parts.initializers);
        // Moving the initializers to the end of the graph changes no field's value.
        if let (Ok(model), Ok(rejoined)) = (&model, pb::decode_model(&joined)) {
            assert_eq!(pb::encode_model(&rejoined), pb::encode_model(model));
        }
    }
    // `gpt2c verify`'s checks that need nothing but the model: structure, then shape inference.
    let (checked, findings) = structure::check_model_bytes(data);
    assert_eq!(checked.is_some(), model.is_ok());
    assert!(findings.iter().all(|f| !f.message.is_empty()));
    if let Some(graph) = checked.as_ref().and_then(|m| m.graph.as_ref()) {
        let _ = infer::infer_graph(graph);
    }
    let edits = Edits { last_position_logits: true, pretransposed_head: true };
    if let Some(out) = specialize(data, "model.onnx", edits) {
        pb::decode_model(&out).expect("a specialized model decodes");
    }
});
