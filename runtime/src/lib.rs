//! gpt2c's runtime: runs an export folder on ONNX Runtime (`ort`, loaded
//! dynamically) or tract (pure Rust).
//!
//! [`backend`] holds the graph runners behind one small trait; both run the
//! same graph and are cross-checked by the test suite.

pub mod backend;
pub mod tensor;

pub use backend::{BackendKind, GraphRunner, RunnerOptions, RuntimeError, load_runner};
pub use tensor::{HostData, HostTensor};
