//! The compiler's enums as command-line values. The compiler has no command line: each enum
//! lists its values (`ALL`) and names and parses from them; here they get clap's possible values
//! (listed in `--help`) with a line of help each.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use gpt2c_compiler::gpt2::search::Generation;
use gpt2c_compiler::gpt2::{FloatType, Int4Activations, KvCache, Quantize, Target, Task};
use gpt2c_compiler::layout::Layout;
use gpt2c_compiler::onnx::ExternalData;

/// An enum the user chooses a value of by name.
pub trait Choice: Copy + Send + Sync + 'static {
    fn all() -> &'static [Self];
    fn name(self) -> &'static str;
    /// One line for `--help`.
    fn help(self) -> &'static str;
}

/// clap's parser for `T`: one of its names, listed with their help.
pub fn choice<T: Choice>() -> impl TypedValueParser<Value = T> {
    let values = T::all().iter().map(|&v| PossibleValue::new(v.name()).help(v.help()));
    PossibleValuesParser::new(values).try_map(|name: String| {
        T::all().iter().copied().find(|v| v.name() == name).ok_or_else(|| format!("unknown value `{name}`"))
    })
}

macro_rules! choice {
    ($ty:ty, { $($variant:path => $help:literal),+ $(,)? }) => {
        impl Choice for $ty {
            fn all() -> &'static [Self] {
                <$ty>::ALL
            }
            fn name(self) -> &'static str {
                <$ty>::name(self)
            }
            fn help(self) -> &'static str {
                match self {
                    $($variant => $help),+
                }
            }
        }
    };
}

choice!(FloatType, {
    FloatType::Fp32 => "32-bit floats",
    FloatType::Fp16 => "16-bit floats (LayerNorm, mask, softmax and the residual stream stay fp32)",
});
choice!(Quantize, {
    Quantize::None => "float weights",
    Quantize::Int8 => "int8 weights per output channel, activations quantized at run time",
    Quantize::Int8Weights => "int8 weights dequantized before a float MatMul",
    Quantize::Int4 => "4-bit weights in blocks of 32",
});
choice!(Int4Activations, {
    Int4Activations::Int8 => "activations quantized to int8 per block at run time (MatMulNBits accuracy_level 4, fastest)",
    Int4Activations::Float => "fp32 activations times the dequantized weights (accuracy_level unset)",
});
choice!(Target, {
    Target::Portable => "standard ONNX operators only (ONNX Runtime, tract, any runtime)",
    Target::Ort => "ONNX Runtime's fused kernels (opset-23 Attention, SkipLayerNormalization, FastGelu)",
});
choice!(Generation, {
    Generation::Greedy => "com.microsoft.GreedySearch: greedy decoding inside the graph",
    Generation::Beam => "com.microsoft.BeamSearch: beam search inside the graph",
    Generation::Sampling => "com.microsoft.Sampling: temperature and top-p sampling inside the graph",
});
choice!(KvCache, {
    KvCache::Concat => "present = Concat(past, new): a new cache every step, any runtime",
    KvCache::Shared => "GroupQueryAttention appends into one past/present buffer (--target ort, ONNX Runtime)",
});
choice!(Task, {
    Task::TextGeneration => "GPT2LMHeadModel without a cache: logits for every position",
    Task::TextGenerationWithPast => "GPT2LMHeadModel with past key/values: prompt and decode steps in one graph",
    Task::FeatureExtraction => "GPT2Model: last_hidden_state",
    Task::FeatureExtractionWithPast => "GPT2Model with past key/values",
    Task::TextClassification => "GPT2ForSequenceClassification: logits [batch, num_labels]",
    Task::TokenClassification => "GPT2ForTokenClassification: logits [batch, sequence, num_labels]",
    Task::QuestionAnswering => "GPT2ForQuestionAnswering: start_logits, end_logits",
    Task::MultipleChoice => "GPT2DoubleHeadsModel: logits and mc_logits over choices",
});
choice!(Layout, {
    Layout::Optimum => "model.onnx at the top (optimum, ONNX Runtime, gpt2c)",
    Layout::Genai => "also genai_config.json for onnxruntime-genai",
    Layout::TransformersJs => "onnx/model{suffix}.onnx for @huggingface/transformers",
    Layout::Triton => "a Triton model repository: NAME/config.pbtxt, NAME/1/model.onnx",
});
choice!(ExternalData, {
    ExternalData::Auto => "model.onnx_data only past protobuf's 2 GiB limit",
    ExternalData::Always => "weights always in model.onnx_data",
    ExternalData::Never => "weights always inline (fails past 2 GiB)",
});
