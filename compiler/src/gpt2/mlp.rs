//! GPT-2's MLP (`GPT2MLP`): `c_proj(act(c_fc(x)))`, and every activation a GPT-2
//! config can name, computed as transformers' `ACT2FN` computes it.

use super::BuildError;
use super::linear::{Ctx, conv1d};
use super::precision::Part;
use crate::checkpoint::Activation;
use crate::ir::{GraphBuilder, GraphError, Op, ValueId};

/// The MLP of one block (in the compute type).
pub(crate) fn mlp(b: &mut GraphBuilder, ctx: &Ctx<'_>, scope: &str, x: ValueId) -> Result<ValueId, BuildError> {
    let c = ctx.c;
    let hidden = conv1d(b, ctx, &format!("{scope}.c_fc"), Part::Mlp, x, c.n_embd, c.n_inner)?;
    let hidden = b.scoped("act", |b| activation(b, c.activation, hidden))?;
    conv1d(b, ctx, &format!("{scope}.c_proj"), Part::Mlp, hidden, c.n_inner, c.n_embd)
}

/// Wires `act(x)`.
pub fn activation(b: &mut GraphBuilder, act: Activation, x: ValueId) -> Result<ValueId, GraphError> {
    let dtype = b.ty(x).dtype;
    let k = |b: &mut GraphBuilder, v: f32| b.scalar_f(dtype, v);
    match act {
        // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        Activation::GeluTanh => {
            let three = k(b, 3.0)?;
            let cube = b.pow(x, three)?;
            let c1 = k(b, 0.044715)?;
            let cube = b.mul(cube, c1)?;
            let inner = b.add(x, cube)?;
            let c2 = k(b, (2.0f64 / std::f64::consts::PI).sqrt() as f32)?;
            let inner = b.mul(inner, c2)?;
            half_x_times_one_plus(b, x, Op::Tanh, inner)
        }
        // 0.5·x·(1 + erf(x/√2))
        Activation::Gelu => gelu_erf(b, x),
        // 0.5·x·(1 + tanh(0.7978845608·x·(1 + 0.044715·x²)))
        Activation::GeluFast => {
            let sq = b.mul(x, x)?;
            let c1 = k(b, 0.044715)?;
            let sq = b.mul(sq, c1)?;
            let one = k(b, 1.0)?;
            let poly = b.add(sq, one)?;
            let c2 = k(b, 0.797_884_6)?;
            let xs = b.mul(x, c2)?;
            let inner = b.mul(xs, poly)?;
            half_x_times_one_plus(b, x, Op::Tanh, inner)
        }
        Activation::Gelu10 => {
            let g = gelu_erf(b, x)?;
            let (lo, hi) = (k(b, -10.0)?, k(b, 10.0)?);
            b.node1(Op::Clip, &[g, lo, hi])
        }
        // x·sigmoid(1.702·x)
        Activation::QuickGelu => {
            let c = k(b, 1.702)?;
            let xs = b.mul(x, c)?;
            let s = b.unary(Op::Sigmoid, xs)?;
            b.mul(x, s)
        }
        Activation::Relu => b.unary(Op::Relu, x),
        Activation::Relu2 => {
            let r = b.unary(Op::Relu, x)?;
            b.mul(r, r)
        }
        Activation::Relu6 => {
            let (lo, hi) = (k(b, 0.0)?, k(b, 6.0)?);
            b.node1(Op::Clip, &[x, lo, hi])
        }
        Activation::Silu => {
            let s = b.unary(Op::Sigmoid, x)?;
            b.mul(x, s)
        }
        Activation::Tanh => b.unary(Op::Tanh, x),
        Activation::Sigmoid => b.unary(Op::Sigmoid, x),
        Activation::LeakyRelu => b.node1(Op::LeakyRelu { alpha: 0.01 }, &[x]),
        // x·tanh(softplus(x))
        Activation::Mish => {
            let sp = b.unary(Op::Softplus, x)?;
            let t = b.unary(Op::Tanh, sp)?;
            b.mul(x, t)
        }
        Activation::Linear => Ok(x),
    }
}

fn gelu_erf(b: &mut GraphBuilder, x: ValueId) -> Result<ValueId, GraphError> {
    let dtype = b.ty(x).dtype;
    let c = b.scalar_f(dtype, std::f32::consts::FRAC_1_SQRT_2)?;
    let inner = b.mul(x, c)?;
    half_x_times_one_plus(b, x, Op::Erf, inner)
}

/// `0.5·x·(1 + f(inner))`.
fn half_x_times_one_plus(b: &mut GraphBuilder, x: ValueId, f: Op, inner: ValueId) -> Result<ValueId, GraphError> {
    let dtype = b.ty(x).dtype;
    let t = b.unary(f, inner)?;
    let one = b.scalar_f(dtype, 1.0)?;
    let t = b.add(t, one)?;
    let half = b.scalar_f(dtype, 0.5)?;
    let hx = b.mul(x, half)?;
    b.mul(hx, t)
}
