//! tract (pure Rust): the export loaded with its symbolic batch, sequence and
//! past dimensions, optimized once, then run for any sizes.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::{GraphRunner, RunnerOptions, RuntimeError};
use crate::tensor::{ElemType, HostData, HostTensor};

type Plan = Arc<TypedSimplePlan>;

/// A tract plan over one model file.
pub struct TractRunner {
    plan: Plan,
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
        let load = |e: TractError| RuntimeError::Load { path: model.into(), message: format!("{e:#}") };
        let onnx = tract_onnx::onnx();
        let specialized = super::specialized_bytes(model, options.logits)?;
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
                _ => None,
            })
            .collect();
        let outputs = typed.output_outlets().map_err(load)?.iter().map(|&o| label(o)).collect();
        let mut run_options = RunOptions::default();
        if let Some(n) = options.threads.filter(|&n| n > 1) {
            run_options.executor = Some(tract_linalg::multithread::Executor::multithread(n));
        }
        let plan = typed.into_runnable_with_options(&run_options).map_err(load)?;
        Ok(TractRunner { plan, last_only: specialized.is_some(), inputs, input_types, outputs })
    }
}

fn to_tvalue(t: &HostTensor) -> TractResult<TValue> {
    Ok(match &t.data {
        HostData::F32(v) => Tensor::from_shape(&t.shape, v)?.into(),
        HostData::F16(v) => Tensor::from_shape(&t.shape, v)?.into(),
        HostData::I64(v) => Tensor::from_shape(&t.shape, v)?.into(),
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
        let outputs = self.plan.run(ordered).map_err(tract_err)?;
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
                    other => {
                        return Err(RuntimeError::Tract(format!("output {name} has unsupported type {other:?}")));
                    }
                };
                Ok((name.clone(), HostTensor { shape, data }))
            })
            .collect()
    }
}
