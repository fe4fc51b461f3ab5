//! An eager GPT-2 forward computed straight from a checkpoint's weights: the oracle `gpt2c verify`
//! compares exported graphs against.
//!
//! It shares no arithmetic with the graph builder (`crate::gpt2`), so a mistake there cannot hide
//! in both: the weights are read once into f32 `ndarray` arrays and the forward follows
//! transformers 4.57 `modeling_gpt2.py` with eager attention step by step, down to its masking
//! constants (a query row whose keys are all padding softmaxes uniformly over its causal keys, as
//! there). Only the export contract's input and output names are shared.
//!
//! Everything is f32 as in transformers' fp32 runs, and where the last bits get amplified (on the
//! fixtures, transformers' own output is up to 1.2e-5 away from exact arithmetic) the arithmetic
//! follows PyTorch's CPU kernels: LayerNorm's mean and variance as its `RowwiseMoments` computes
//! them, the small attention matmuls as its plain loop, linear layers as ordered fused
//! multiply-adds (what its BLAS does for small inner sizes). Softmax and the activations are
//! evaluated in f64 and rounded once. On the committed fixtures the result stays within 6e-6 of
//! transformers' outputs. Each sequence (a `(batch, choice)` pair for multiple choice) runs on its
//! own: GPT-2 never mixes rows, so this is the batched computation element for element.

use std::borrow::Cow;
use std::collections::BTreeMap;

use gpt2c_runtime::{HostData, HostTensor};
use ndarray::{Array1, Array2, Array3, ArrayView2, Axis, Zip, s};

use gpt2c_compiler::checkpoint::{Activation, Checkpoint, Gpt2Config, SummaryType, WeightError, Weights};
use gpt2c_compiler::gpt2::Task;

use crate::contract;

mod inputs;
mod kernels;
mod model;
#[cfg(test)]
mod tests;

use inputs::*;
use kernels::*;
pub use model::ReferenceModel;
use model::*;

/// Errors loading the reference model or running it.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("tensor `{name}`: {message}")]
    Weight { name: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("input `{name}` is missing: the {task} export takes {expected}")]
    MissingInput { name: String, task: &'static str, expected: String },
    #[error("input `{name}` is not an input of the {task} export, which takes {expected}")]
    UnknownInput { name: String, task: &'static str, expected: String },
    #[error("input `{name}` is given more than once")]
    DuplicateInput { name: String },
    #[error("input `{name}` holds {found}, expected {expected}")]
    InputType { name: String, expected: &'static str, found: &'static str },
    #[error("input `{name}` has shape {found:?}, expected {expected}")]
    InputShape { name: String, expected: String, found: Vec<usize> },
    #[error("input `{name}`: {message}")]
    InputValue { name: String, message: String },
}
