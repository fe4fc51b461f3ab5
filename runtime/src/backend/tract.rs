//! tract (pure Rust): the export loaded with its symbolic batch, sequence and
//! past dimensions, optimized once, then run for any sizes.

use std::path::Path;

use tract_onnx::prelude::*;

use super::{GraphRunner, RunnerOptions, RuntimeError};
use crate::tensor::{ElemType, HostData, HostTensor};

type State = TypedSimpleState;

/// A tract plan over one model file.
pub struct TractRunner {
    /// Kept between runs, so a step does not rebuild the plan's state.
    state: State,
    last_only: bool,
    inputs: Vec<String>,
    input_types: Vec<Option<ElemType>>,
    outputs: Vec<String>,
}

fn tract_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Tract(format!("{e:#}"))
}

impl TractRunner {
    pub fn load(model: &Path, options: &RunnerOptions) -> Result<TractRunner, RuntimeError> {
        Self::load_with(model, None, options)
    }

    /// Loads `bytes`, a model whose external data lives beside `model` (named in messages).
    pub fn load_bytes(model: &Path, bytes: Vec<u8>, options: &RunnerOptions) -> Result<TractRunner, RuntimeError> {
        Self::load_with(model, Some(bytes), options)
    }

    fn load_with(model: &Path, given: Option<Vec<u8>>, options: &RunnerOptions) -> Result<TractRunner, RuntimeError> {
        options.validate()?;
        if crate::specialize::gpt2c_kv_cache(model).as_deref() == Some("shared") {
            return Err(RuntimeError::Load {
                path: model.into(),
                message: "exported with --kv-cache shared: its attention is ONNX Runtime's \
                          com.microsoft.GroupQueryAttention, which tract does not run; use --backend ort, or \
                          re-export with --kv-cache concat for tract"
                    .into(),
            });
        }
        let load = |e: TractError| RuntimeError::Load { path: model.into(), message: format!("{e:#}") };
        let onnx = tract_onnx::onnx();
        let edits = crate::specialize::Edits {
            last_position_logits: options.logits == super::LogitsScope::Last,
            pretransposed_head: true,
        };
        let given_bytes = given.is_some();
        let specialized = match given {
            Some(bytes) => Some(bytes),
            None => super::specialized_bytes(model, edits)?,
        };
        let inference = match &specialized {
            Some(bytes) => {
                let proto = onnx.proto_model_for_read(&mut bytes.as_slice()).map_err(load)?;
                let dir = model.parent().and_then(|d| d.to_str());
                onnx.parse(&proto, dir).map_err(load)?.model
            }
            None => onnx.model_for_path(model).map_err(load)?,
        };
        let typed = inference.into_optimized().map_err(load)?;
        let label =
            |o: OutletId| typed.outlet_label(o).map(str::to_string).unwrap_or_else(|| typed.node(o.node).name.clone());
        let inputs = typed.input_outlets().map_err(load)?.iter().map(|&o| typed.node(o.node).name.clone()).collect();
        let input_types = typed
            .input_outlets()
            .map_err(load)?
            .iter()
            .map(|&o| match typed.outlet_fact(o).map(|f| f.datum_type) {
                Ok(DatumType::F32) => Some(ElemType::F32),
                Ok(DatumType::F16) => Some(ElemType::F16),
                Ok(DatumType::I64) => Some(ElemType::I64),
                Ok(DatumType::I32) => Some(ElemType::I32),
                _ => None,
            })
            .collect();
        let outputs = typed.output_outlets().map_err(load)?.iter().map(|&o| label(o)).collect();
        let mut run_options = RunOptions::default();
        if let Some(n) = options.threads.filter(|&n| n > 1) {
            run_options.executor = Some(tract_linalg::multithread::Executor::multithread(n));
        }
        let plan = typed.into_runnable_with_options(&run_options).map_err(load)?;
        let state = plan.spawn().map_err(load)?;
        Ok(TractRunner {
            state,
            last_only: specialized.is_some() && !given_bytes && edits.last_position_logits,
            inputs,
            input_types,
            outputs,
        })
    }
}

fn to_tvalue(t: &HostTensor) -> TractResult<TValue> {
    Ok(match &t.data {
        HostData::F32(v) => Tensor::from_shape(&t.shape, v)?.into(),
        HostData::F16(v) => Tensor::from_shape(&t.shape, v)?.into(),
        HostData::I64(v) => Tensor::from_shape(&t.shape, v)?.into(),
        HostData::I32(v) => Tensor::from_shape(&t.shape, v)?.into(),
    })
}

impl GraphRunner for TractRunner {
    fn describe(&self) -> String {
        "tract (pure Rust, CPU)".to_string()
    }

    fn last_logits_only(&self) -> bool {
        self.last_only
    }

    fn input_names(&self) -> Vec<String> {
        self.inputs.clone()
    }

    fn output_names(&self) -> Vec<String> {
        self.outputs.clone()
    }

    fn input_type(&self, name: &str) -> Option<ElemType> {
        self.inputs.iter().position(|n| n == name).and_then(|i| self.input_types.get(i).copied().flatten())
    }

    fn run(&mut self, inputs: &[(&str, &HostTensor)]) -> Result<Vec<(String, HostTensor)>, RuntimeError> {
        let mut ordered = TVec::with_capacity(self.inputs.len());
        for name in &self.inputs {
            let (_, t) = inputs.iter().find(|(n, _)| n == name).ok_or_else(|| RuntimeError::Input {
                name: name.clone(),
                message: "required by the model but not given".into(),
            })?;
            ordered
                .push(to_tvalue(t).map_err(|e| RuntimeError::Input { name: name.clone(), message: format!("{e:#}") })?);
        }
        let outputs = self.state.run(ordered).map_err(tract_err)?;
        self.outputs
            .iter()
            .zip(outputs)
            .map(|(name, v)| {
                let shape = v.shape().to_vec();
                let plain = v.try_as_plain_ram().map_err(tract_err)?;
                let data = match v.datum_type() {
                    DatumType::F32 => HostData::F32(plain.as_slice::<f32>().map_err(tract_err)?.to_vec()),
                    DatumType::F16 => HostData::F16(plain.as_slice::<f16>().map_err(tract_err)?.to_vec()),
                    DatumType::I64 => HostData::I64(plain.as_slice::<i64>().map_err(tract_err)?.to_vec()),
                    DatumType::I32 => HostData::I32(plain.as_slice::<i32>().map_err(tract_err)?.to_vec()),
                    other => {
                        return Err(RuntimeError::Tract(format!("output {name} has unsupported type {other:?}")));
                    }
                };
                Ok((name.clone(), HostTensor { shape, data }))
            })
            .collect()
    }
}

/// The tract engine of a decoding session: the cache stays as tract values
/// (shared tensors) passed back from one step to the next.
pub struct TractEngine {
    runner: TractRunner,
    /// For each graph input in order: where its value comes from.
    feeds: Vec<Feed>,
    /// Output positions of logits and of each present (key then value per layer).
    logits_at: usize,
    presents_at: Vec<usize>,
    cache_type: ElemType,
}

#[derive(Clone, Copy)]
enum Feed {
    InputIds,
    AttentionMask,
    PositionIds,
    Cache(usize),
}

impl TractEngine {
    pub fn new(runner: TractRunner, n_layer: usize) -> Result<TractEngine, RuntimeError> {
        let (past_names, present_names) = crate::backend::engine::cache_names(n_layer);
        let missing = |n: &str| RuntimeError::Tract(format!("the model has no `{n}`"));
        let feeds = runner
            .inputs
            .iter()
            .map(|name| match name.as_str() {
                "input_ids" => Ok(Feed::InputIds),
                "attention_mask" => Ok(Feed::AttentionMask),
                "position_ids" => Ok(Feed::PositionIds),
                other => past_names.iter().position(|p| p == other).map(Feed::Cache).ok_or_else(|| missing(other)),
            })
            .collect::<Result<_, _>>()?;
        let at = |n: &str| runner.outputs.iter().position(|o| o == n).ok_or_else(|| missing(n));
        let logits_at = at("logits")?;
        let presents_at = present_names.iter().map(|n| at(n)).collect::<Result<_, _>>()?;
        let cache_type = past_names.first().and_then(|k| runner.input_type(k)).unwrap_or(ElemType::F32);
        Ok(TractEngine { runner, feeds, logits_at, presents_at, cache_type })
    }
}

impl crate::backend::engine::Engine for TractEngine {
    type Value = TValue;

    fn cache_type(&self) -> ElemType {
        self.cache_type
    }

    fn empty(&self, shape: &[usize]) -> Result<TValue, RuntimeError> {
        let dt = if self.cache_type == ElemType::F16 { DatumType::F16 } else { DatumType::F32 };
        Tensor::zero_dt(dt, shape).map(TValue::from).map_err(tract_err)
    }

    fn step(
        &mut self,
        t: &crate::backend::engine::TokenInputs<'_>,
        cache: &[TValue],
    ) -> Result<(crate::backend::engine::AllLogits, Vec<TValue>), RuntimeError> {
        let i64s = |shape: [usize; 2], data: &[i64]| -> Result<TValue, RuntimeError> {
            Ok(Tensor::from_shape(&shape, data).map_err(tract_err)?.into())
        };
        let mut inputs = TVec::with_capacity(self.feeds.len());
        for feed in &self.feeds {
            inputs.push(match *feed {
                Feed::InputIds => i64s([t.rows, t.seq], t.input_ids)?,
                Feed::AttentionMask => i64s([t.rows, t.total], t.attention_mask)?,
                Feed::PositionIds => i64s([t.rows, t.seq], t.position_ids)?,
                Feed::Cache(i) => cache.get(i).cloned().ok_or_else(|| RuntimeError::Tract("cache too short".into()))?,
            });
        }
        let outputs = self.runner.state.run(inputs).map_err(tract_err)?;
        let logits = outputs.get(self.logits_at).ok_or_else(|| RuntimeError::Tract("no logits".into()))?;
        let [rows, positions, vocab] = logits.shape()[..] else {
            return Err(RuntimeError::Tract(format!("logits have shape {:?}", logits.shape())));
        };
        let plain = logits.try_as_plain_ram().map_err(tract_err)?;
        let data = match logits.datum_type() {
            DatumType::F16 => plain.as_slice::<f16>().map_err(tract_err)?.iter().map(|x| x.to_f32()).collect(),
            _ => plain.as_slice::<f32>().map_err(tract_err)?.to_vec(),
        };
        let presents = self.presents_at.iter().map(|&i| outputs[i].clone()).collect();
        Ok((crate::backend::engine::AllLogits { rows, positions, vocab, data }, presents))
    }

    fn select_rows(&mut self, cache: &[TValue], rows: &[usize]) -> Result<Vec<TValue>, RuntimeError> {
        cache
            .iter()
            .map(|value| {
                let parts = rows
                    .iter()
                    .map(|&r| value.slice(0, r, r + 1).map_err(tract_err))
                    .collect::<Result<Vec<Tensor>, _>>()?;
                Tensor::stack_tensors(0, &parts).map(TValue::from).map_err(tract_err)
            })
            .collect()
    }

    fn assemble(
        &mut self,
        parts: Vec<crate::backend::engine::CachePart<TValue>>,
        sources: &[crate::backend::engine::RowSource],
        width: usize,
    ) -> Result<Vec<TValue>, RuntimeError> {
        let joined = crate::backend::assemble::assemble_parts(&parts, sources, width, |v| {
            host_of(v).map(std::borrow::Cow::Owned)
        })?;
        joined.iter().map(|t| to_tvalue(t).map_err(tract_err)).collect()
    }

    fn copy_out(&mut self, cache: &[TValue], _rows: usize, _width: usize) -> Result<Vec<HostTensor>, RuntimeError> {
        cache.iter().map(host_of).collect()
    }

    fn copy_in(&mut self, tensors: &[HostTensor]) -> Result<Vec<TValue>, RuntimeError> {
        tensors.iter().map(|t| to_tvalue(t).map_err(tract_err)).collect()
    }

    fn last_logits_only(&self) -> bool {
        self.runner.last_only
    }
}

/// A float tract value copied into a host tensor.
fn host_of(v: &TValue) -> Result<HostTensor, RuntimeError> {
    let shape = v.shape().to_vec();
    let plain = v.try_as_plain_ram().map_err(tract_err)?;
    let data = match v.datum_type() {
        DatumType::F32 => HostData::F32(plain.as_slice::<f32>().map_err(tract_err)?.to_vec()),
        DatumType::F16 => HostData::F16(plain.as_slice::<f16>().map_err(tract_err)?.to_vec()),
        other => return Err(RuntimeError::Tract(format!("a cache tensor of type {other:?}"))),
    };
    Ok(HostTensor { shape, data })
}
