//! gpt2c's compiler: reads a Hugging Face GPT-2 checkpoint and builds its ONNX
//! graph directly from the weights (no PyTorch, no tracing).
//!
//! ```text
//! checkpoint (config.json, safetensors) ─► gpt2 (graph builder over ir) ─► onnx (writer) ─► export folder
//! ```

pub mod checkpoint;
pub mod export;
pub mod gpt2;
pub mod hub;
pub mod ir;
pub mod layout;
mod named;
pub mod onnx;
pub mod quant;

pub use export::{ExportError, ExportOptions, ExportSummary, Progress, export};
