//! Arbitrary bytes as the `data.pkl` of a `pytorch_model.bin`: the restricted unpickler returns a
//! value or an error, in bounded time and memory, and never accepts a global outside its list.
#![no_main]

use gpt2c_compiler::checkpoint::pickle::{self, Value};
use libfuzzer_sys::fuzz_target;

fn globals_are_allowed(v: &Value) -> bool {
    match v {
        Value::Global(name) => name.starts_with("torch.") || name == "collections.OrderedDict",
        Value::Tuple(items) | Value::List(items) => items.iter().all(globals_are_allowed),
        Value::Dict(pairs) => pairs.iter().all(|(k, v)| globals_are_allowed(k) && globals_are_allowed(v)),
        Value::Tensor { storage, .. } => globals_are_allowed(storage),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    match pickle::load(data) {
        Ok(value) => assert!(globals_are_allowed(&value)),
        Err(message) => assert!(!message.is_empty()),
    }
});
