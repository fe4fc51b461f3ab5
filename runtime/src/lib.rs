//! gpt2c's runtime: runs an export folder on ONNX Runtime (`ort`, loaded
//! dynamically) or tract (pure Rust), with one generation driver for both.
//!
//! ```text
//! export folder ─► model (config, generation_config, tokenizer) ─► backend (ort | tract)
//!               ─► session (graph + KV cache) ─► generate (processors, strategies, stopping) ─► tokens / text
//! ```

pub mod backend;
pub mod batch;
pub mod generate;
pub mod model;
pub mod perplexity;
pub mod playback;
pub mod search;
pub mod session;
pub mod specialize;
pub mod tensor;
pub mod text;
pub mod tokenizer;

pub use backend::{BackendKind, GraphOptimization, GraphRunner, RunnerOptions, RuntimeError, load_runner};
pub use generate::{GenerateError, GenerationConfig, GenerationOutput, ModelLimits, generate};
pub use model::{ExportedModel, ModelError};
pub use session::{DecoderSession, KvSession};
pub use tensor::{HostData, HostTensor};
pub use tokenizer::TextTokenizer;
