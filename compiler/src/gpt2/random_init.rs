//! Weights for a config alone, initialised as transformers initialises a fresh
//! `GPT2LMHeadModel(GPT2Config(...))` (4.57 `GPT2PreTrainedModel._init_weights`):
//! linear, Conv1D and embedding weights normal(0, `initializer_range`), the
//! residual projections `attn.c_proj` / `mlp.c_proj` normal(0,
//! `initializer_range / sqrt(2·n_layer)`), biases zero, LayerNorm weight one
//! and bias zero. For testing deployment pipelines and benchmarking shapes
//! (gpt2-xl) without downloading weights; the values are gpt2c's own (seeded
//! xoshiro256** with Box–Muller normals), not torch's random stream.

use std::path::Path;
use std::sync::Arc;

use gpt2c_rng::{Normal, stream_seed};

use super::Task;

use crate::checkpoint::{Checkpoint, CheckpointError, ConfigError, Gpt2Config, InMemoryWeights};

/// A checkpoint from a config alone (a config.json file, or a folder holding one), its weights
/// initialised for `task` (by default the one its `architectures` implies) from `seed`.
pub fn random_checkpoint(config: &Path, task: Option<Task>, seed: u64) -> Result<Checkpoint, CheckpointError> {
    Checkpoint::with_weights(config, |parsed, config_path| {
        let task = match task {
            Some(t) => t,
            None => Task::from_architectures(&parsed.architectures).map_err(|message| {
                CheckpointError::Config(ConfigError::Field {
                    path: config_path.to_path_buf(),
                    field: "architectures".into(),
                    message,
                })
            })?,
        };
        Ok(Arc::new(random_weights(parsed, task, seed)))
    })
}

/// Normal draws for one tensor: the workspace's generator, seeded from (seed, tensor name) so a
/// tensor's values do not depend on the others.
fn normal_for(seed: u64, name: &str) -> Normal {
    Normal::new(stream_seed(seed, name))
}

/// What a tensor is initialised to.
enum Init {
    Normal(f64),
    Zeros,
    Ones,
}

/// The tensors of `task`'s transformers class for `config`, initialised as transformers does.
pub fn random_weights(c: &Gpt2Config, task: Task, seed: u64) -> InMemoryWeights {
    let std = c.initializer_range;
    let residual = std / ((2 * c.n_layer) as f64).sqrt();
    let (e, inner) = (c.n_embd, c.n_inner);
    let mut tensors: Vec<(String, Vec<usize>, Init)> = vec![
        ("wte.weight".into(), vec![c.vocab_size, e], Init::Normal(std)),
        ("wpe.weight".into(), vec![c.n_positions, e], Init::Normal(std)),
    ];
    for i in 0..c.n_layer {
        let p = format!("h.{i}");
        for ln in ["ln_1", "ln_2"] {
            tensors.push((format!("{p}.{ln}.weight"), vec![e], Init::Ones));
            tensors.push((format!("{p}.{ln}.bias"), vec![e], Init::Zeros));
        }
        let linears = [
            ("attn.c_attn", e, 3 * e, std),
            ("attn.c_proj", e, e, residual),
            ("mlp.c_fc", e, inner, std),
            ("mlp.c_proj", inner, e, residual),
        ];
        for (name, n_in, n_out, sd) in linears {
            tensors.push((format!("{p}.{name}.weight"), vec![n_in, n_out], Init::Normal(sd)));
            tensors.push((format!("{p}.{name}.bias"), vec![n_out], Init::Zeros));
        }
    }
    tensors.push(("ln_f.weight".into(), vec![e], Init::Ones));
    tensors.push(("ln_f.bias".into(), vec![e], Init::Zeros));
    let labels = c.num_labels;
    let head = |name: &str, n_out: usize, bias: bool| {
        let mut t = vec![(format!("{name}.weight"), vec![n_out, e], Init::Normal(std))];
        if bias {
            t.push((format!("{name}.bias"), vec![n_out], Init::Zeros));
        }
        t
    };
    match task {
        Task::TextGeneration | Task::TextGenerationWithPast | Task::MultipleChoice if !c.tie_word_embeddings => {
            tensors.extend(head("lm_head", c.vocab_size, false));
        }
        Task::TextClassification => tensors.extend(head("score", labels, false)),
        Task::TokenClassification => tensors.extend(head("classifier", labels, true)),
        Task::QuestionAnswering => tensors.extend(head("qa_outputs", 2, true)),
        _ => {}
    }
    if task == Task::MultipleChoice && c.summary.use_proj {
        tensors.extend(head("multiple_choice_head.summary", super::heads::summary_width(c), true));
    }
    let mut weights = InMemoryWeights::new();
    for (name, shape, init) in tensors {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(sd) => {
                let mut rng = normal_for(seed, &name);
                (0..n).map(|_| (rng.sample() * sd) as f32).collect()
            }
        };
        weights.insert_f32(&name, &shape, &values);
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_the_asked_moments() {
        let mut rng = normal_for(7, "x");
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.sample()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.01, "mean {mean}, var {var}");
        assert_ne!(normal_for(7, "x").sample(), normal_for(7, "y").sample());
        assert_eq!(normal_for(7, "x").sample(), normal_for(7, "x").sample());
    }
}
