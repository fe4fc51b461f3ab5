//! Weights in `model.onnx_data`: the layout ONNX Runtime and tract read, with
//! small constants kept inline and large tensors aligned.

use gpt2c_compiler::ExportOptions;
use gpt2c_compiler::onnx::ExternalData;
use gpt2c_proto as pb;
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_runtime::{HostTensor, RunnerOptions, load_runner};
use gpt2c_tests::{Reference, backends, empty_past, export_fixture, fixture, max_abs_diff, runner};

#[test]
fn external_data_export_runs_and_matches() {
    let options = ExportOptions { external_data: ExternalData::Always, ..Default::default() };
    let (_tmp, out) = export_fixture("tiny-default", &options);
    let data = std::fs::metadata(out.join("model.onnx_data")).expect("model.onnx_data written").len();
    let model_bytes = std::fs::read(out.join("model.onnx")).unwrap();
    let model = pb::decode_model(&model_bytes).unwrap();
    let graph = model.graph.unwrap();
    let mut external = 0;
    for t in &graph.initializer {
        let location = t.data_location.unwrap_or(0);
        if location == pb::tensor_proto::DataLocation::External as i32 {
            external += 1;
            let get =
                |k: &str| t.external_data.iter().find(|e| e.key.as_deref() == Some(k)).and_then(|e| e.value.clone());
            assert_eq!(get("location").as_deref(), Some("model.onnx_data"));
            let offset: u64 = get("offset").unwrap().parse().unwrap();
            let length: u64 = get("length").unwrap().parse().unwrap();
            assert!(offset + length <= data && offset.is_multiple_of(64), "{:?}", t.name);
            assert!(t.raw_data.is_none());
        } else {
            assert!(t.raw_data.as_ref().is_some_and(|r| r.len() < 1024), "{:?} inline but large", t.name);
        }
    }
    assert!(external >= 10, "weights went external ({external})");
    assert!(model_bytes.len() < 64 * 1024, "model.onnx holds only the structure");

    let reference = Reference::load(&fixture("tiny-default").join("reference.safetensors"));
    for kind in backends() {
        let mut run = runner(kind, &out);
        let mut inputs = vec![
            ("input_ids", reference.get("a.input_ids")),
            ("attention_mask", reference.get("a.attention_mask")),
            ("position_ids", reference.get("a.position_ids")),
        ];
        let past = empty_past(2, 1, 4, 8);
        inputs.extend(past.iter().map(|(n, t)| (n.as_str(), t)));
        let outputs = run.run(&inputs).unwrap();
        let d = max_abs_diff(&outputs[0].1, reference.get("a.logits"), None);
        assert!(d <= 1e-4, "{}: logits differ by {d}", kind.name());

        // Loaded from memory with last-position logits, the weights still come from model.onnx_data.
        let options = RunnerOptions { logits: LogitsScope::Last, ..Default::default() };
        let mut last = load_runner(kind, &out.join("model.onnx"), &options).unwrap();
        assert!(last.last_logits_only(), "{}: the export was specialized", kind.name());
        let outputs = last.run(&inputs).unwrap();
        let want = reference.get("a.logits");
        let (seq, vocab) = (want.shape[1], want.shape[2]);
        let want_last =
            HostTensor::f32(vec![1, 1, vocab], want.as_f32().unwrap()[(seq - 1) * vocab..].to_vec()).unwrap();
        let d = max_abs_diff(&outputs[0].1, &want_last, None);
        assert!(d <= 1e-4, "{}: last-position logits differ by {d}", kind.name());
    }
}
