//! Numeric formats of an export: the compute float type, weight
//! quantization (per part of the model) and the runtime it targets.

use std::str::FromStr;

use crate::ir::DType;

/// Float type of weights and matmuls (`--dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FloatType {
    #[default]
    Fp32,
    Fp16,
}

crate::named::named_enum!(FloatType, "float type", { Fp32 => "fp32", Fp16 => "fp16" });
crate::named::named_enum!(Quantize, "quantization", {
    None => "none",
    Int8 => "int8",
    Int8Weights => "int8-weights",
    Int4 => "int4",
});
crate::named::named_enum!(Target, "target", { Portable => "portable", Ort => "ort" });
crate::named::named_enum!(KvCache, "key/value cache", { Concat => "concat", Shared => "shared" });
crate::named::named_enum!(Int4Activations, "int4 activation type", { Int8 => "int8", Float => "float" });

impl FloatType {
    pub fn dtype(self) -> DType {
        match self {
            FloatType::Fp32 => DType::F32,
            FloatType::Fp16 => DType::F16,
        }
    }
}

/// Weight quantization (`--quantize`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quantize {
    #[default]
    None,
    /// int8 weights (symmetric, per output channel), activations quantized at run time:
    /// DynamicQuantizeLinear → MatMulInteger → scale.
    Int8,
    /// int8 weights dequantized before a float MatMul (per-channel DequantizeLinear).
    Int8Weights,
    /// 4-bit weights in blocks of 32 (MatMulNBits for ONNX Runtime, blocked DequantizeLinear otherwise).
    Int4,
}

/// The runtime a graph is shaped for (`--target`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// Standard ONNX operators only (ONNX Runtime, tract and any other runtime).
    #[default]
    Portable,
    /// ONNX Runtime: fused kernels (opset-23 Attention, com.microsoft SkipLayerNormalization and
    /// FastGelu; MatMulNBits for int4). Needs opset 23 with fp32 compute.
    Ort,
}

/// How the graph keeps the key/value cache (`--kv-cache`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvCache {
    /// `present = Concat(past, new)`: any runtime, any padding; each step writes a new cache.
    #[default]
    Concat,
    /// ONNX Runtime's `com.microsoft.GroupQueryAttention` per layer: the new keys and values are
    /// written into the past buffer itself when the caller binds one buffer as both `past` and
    /// `present` (a preallocated capacity, as onnxruntime-genai's `past_present_share_buffer`
    /// does); each row's length is the last position its attention mask marks, so rows of one
    /// batch may differ in length. Needs `--target ort` with fp32 compute.
    Shared,
}

/// What int4 matmuls multiply the 4-bit weights with (`--int4-activations`), under `--target ort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int4Activations {
    /// Activations quantized to int8 per block of 32 at run time, integer dot products
    /// (`MatMulNBits` `accuracy_level` 4): ONNX Runtime's fastest CPU kernels, as llama.cpp's Q4_0 does.
    Int8,
    /// fp32 activations times the dequantized weights (`accuracy_level` unset): exactly the
    /// dequantized model, slower.
    Float,
}

impl Int4Activations {
    /// `MatMulNBits`' `accuracy_level` attribute (0 = unset).
    pub fn accuracy_level(self) -> i64 {
        match self {
            Int4Activations::Int8 => 4,
            Int4Activations::Float => 0,
        }
    }
}

/// Parts of the model quantization can skip (`--quantize-skip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The attention projections (c_attn, c_proj).
    Attn,
    /// The MLP (c_fc, c_proj).
    Mlp,
    /// The LM head.
    LmHead,
    /// The token embedding table (wte).
    Embedding,
}

impl FromStr for Part {
    type Err = String;
    fn from_str(s: &str) -> Result<Part, String> {
        match s.trim() {
            "attn" | "attention" => Ok(Part::Attn),
            "mlp" => Ok(Part::Mlp),
            "lm_head" | "head" => Ok(Part::LmHead),
            "embedding" | "wte" => Ok(Part::Embedding),
            other => Err(format!("unknown part `{other}`: choose from attn, mlp, lm_head, embedding")),
        }
    }
}

/// A combination of numeric choices no graph can express.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrecisionError {
    #[error("--quantize cannot be combined with --dtype fp16: quantized graphs compute in fp32")]
    QuantizedFp16,
    #[error("--io-dtype fp16 needs --dtype fp16")]
    Fp16IoNeedsFp16,
    #[error(
        "--kv-cache shared needs --target ort with fp32 compute (it is ONNX Runtime's GroupQueryAttention in the fused blocks)"
    )]
    SharedCacheNeedsOrt,
    #[error(
        "--int4-activations applies to --quantize int4 with --target ort (MatMulNBits); the portable int4 graph always multiplies float activations"
    )]
    Int4ActivationsNeedsOrtInt4,
    #[error("--opset {opset}: {needs} needs opset {min} or later")]
    OpsetTooLow { opset: i64, min: i64, needs: &'static str },
}

/// All numeric choices of one export.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Precision {
    pub dtype: FloatType,
    /// Float type of the graph's inputs and outputs (past/present key-values, logits).
    pub io_dtype: FloatType,
    pub quantize: Quantize,
    pub skip: Vec<Part>,
    pub target: Target,
    pub kv_cache: KvCache,
    /// int4 under `--target ort`: the activations' type (None: [`Int4Activations::Int8`]).
    pub int4_activations: Option<Int4Activations>,
}

impl Precision {
    /// Rejects combinations the graph cannot express.
    pub fn validate(&self) -> Result<(), PrecisionError> {
        if self.quantize != Quantize::None && self.dtype == FloatType::Fp16 {
            return Err(PrecisionError::QuantizedFp16);
        }
        if self.io_dtype == FloatType::Fp16 && self.dtype != FloatType::Fp16 {
            return Err(PrecisionError::Fp16IoNeedsFp16);
        }
        if self.kv_cache == KvCache::Shared && (self.target != Target::Ort || self.compute() != DType::F32) {
            return Err(PrecisionError::SharedCacheNeedsOrt);
        }
        if self.int4_activations.is_some() && (self.quantize != Quantize::Int4 || self.target != Target::Ort) {
            return Err(PrecisionError::Int4ActivationsNeedsOrtInt4);
        }
        Ok(())
    }

    /// Refuses an opset older than the formats need.
    pub fn validate_opset(&self, opset: i64) -> Result<(), PrecisionError> {
        let (min, needs) = self.opset_need();
        if opset < min {
            return Err(PrecisionError::OpsetTooLow { opset, min, needs });
        }
        Ok(())
    }

    /// The quantization applied to `part`.
    pub fn quant_for(&self, part: Part) -> Quantize {
        if self.skip.contains(&part) { Quantize::None } else { self.quantize }
    }

    /// What `MatMulNBits` multiplies its 4-bit weights with.
    pub fn int4_activations(&self) -> Int4Activations {
        self.int4_activations.unwrap_or(Int4Activations::Int8)
    }

    /// Element type of matmul inputs and weights.
    pub fn compute(&self) -> DType {
        self.dtype.dtype()
    }

    /// Element type of the graph's float inputs and outputs.
    pub fn io(&self) -> DType {
        self.io_dtype.dtype()
    }

    /// The lowest default-domain opset the chosen formats need, and what needs it.
    pub fn min_opset(&self) -> i64 {
        self.opset_need().0
    }

    /// (lowest opset, the feature that needs it).
    pub fn opset_need(&self) -> (i64, &'static str) {
        if self.target == Target::Ort && self.compute() == DType::F32 {
            (23, "--target ort (the Attention operator)")
        } else if self.quantize == Quantize::Int4 && self.target == Target::Portable {
            (21, "portable int4 (blocked DequantizeLinear; --target ort uses MatMulNBits instead)")
        } else {
            (14, "")
        }
    }

    /// A short description for model metadata and summaries.
    pub fn describe(&self) -> String {
        let mut s = match self.quantize {
            Quantize::None => format!("{:?}", self.dtype).to_lowercase(),
            Quantize::Int8 => "int8 (dynamic)".into(),
            Quantize::Int8Weights => "int8 weights".into(),
            Quantize::Int4 => {
                if self.target == Target::Ort {
                    format!("int4 (MatMulNBits, {} activations)", self.int4_activations())
                } else {
                    "int4 (DequantizeLinear)".into()
                }
            }
        };
        if !self.skip.is_empty() && self.quantize != Quantize::None {
            let parts: Vec<String> = self.skip.iter().map(|p| format!("{p:?}").to_lowercase()).collect();
            s.push_str(&format!(", skipping {}", parts.join(", ")));
        }
        s
    }
}
