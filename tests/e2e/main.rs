//! gpt2c's end-to-end suite: export fixtures, run them on every backend, and
//! compare with transformers' reference outputs. See `gpt2c_tests` for the
//! environment variables that locate optional tools.

mod batching;
mod determinism;
mod ecosystem;
mod export_folder;
mod external_data;
mod generation;
mod heads;
mod layering;
mod onnx_checker;
mod parity;
mod precision;
mod sampling;
mod search;
mod speculative;
mod streaming;
mod verify;
mod verify_inference;
