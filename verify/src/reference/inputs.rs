//! A run's inputs, read by their contract names and checked against the config: token ids,
//! masks, positions, past caches and encoder states.

use super::*;

/// One sequence's final hidden state and caches.
pub(crate) struct RowOutput {
    /// After `ln_f`, `[S, n_embd]`.
    pub(crate) hidden: Array2<f32>,
    /// Per layer: key and value `[H, past + S, D]`.
    pub(crate) presents: Vec<(Array3<f32>, Array3<f32>)>,
    /// Per layer with cross-attention: key and value `[H, past_enc + enc, D]`.
    pub(crate) cross_presents: Vec<(Array3<f32>, Array3<f32>)>,
}

/// One run's inputs, checked against the export contract and the config.
pub(crate) struct Batch<'a> {
    pub(crate) batch: usize,
    /// Choices per batch entry (multiple choice; 1 otherwise).
    pub(crate) choices: usize,
    pub(crate) seq: usize,
    pub(crate) past: usize,
    /// `[rows, seq]`, each inside the vocabulary.
    pub(crate) ids: Vec<usize>,
    /// `[rows, past + seq]`.
    pub(crate) mask: &'a [i64],
    /// `[rows, seq]`, each inside `wpe`.
    pub(crate) positions: Vec<usize>,
    pub(crate) past_kv: Vec<LayerCache<'a>>,
    pub(crate) mc_token_ids: Option<&'a [i64]>,
    pub(crate) encoder: Option<EncoderBatch<'a>>,
}

/// The cross-attention inputs of one run.
pub(crate) struct EncoderBatch<'a> {
    /// Encoder positions given this run.
    pub(crate) len: usize,
    /// Cached encoder positions.
    pub(crate) past: usize,
    /// `[batch, len, n_embd]`.
    pub(crate) states: Cow<'a, [f32]>,
    /// `[batch, past + len]`.
    pub(crate) mask: &'a [i64],
    pub(crate) past_kv: Vec<LayerCache<'a>>,
}

/// One layer's past key and value inputs, `[batch, H, past, D]` each.
pub(crate) type LayerCache<'a> = (Cow<'a, [f32]>, Cow<'a, [f32]>);

impl<'a> Batch<'a> {
    pub(crate) fn rows(&self) -> usize {
        self.batch * self.choices
    }

    /// Checks names, element types, shapes and values of `inputs` for `model`'s task.
    pub(crate) fn read(
        model: &ReferenceModel,
        inputs: &[(&'a str, &'a HostTensor)],
    ) -> Result<Batch<'a>, ReferenceError> {
        let (c, task) = (&model.config, model.task);
        let named = NamedInputs::new(model, inputs)?;
        let ids_t = named.take("input_ids")?;
        let ids = int_data("input_ids", ids_t)?;
        let lead_rank = if task == Task::MultipleChoice { 2 } else { 1 };
        let tokens_dims =
            if lead_rank == 2 { "[batch_size, num_choices, sequence_length]" } else { "[batch_size, sequence_length]" };
        if ids_t.shape.len() != lead_rank + 1 {
            return Err(shape_error("input_ids", ids_t, tokens_dims.to_string()));
        }
        let (batch, choices, seq) = match ids_t.shape[..] {
            [batch, seq] => (batch, 1, seq),
            [batch, choices, seq] => (batch, choices, seq),
            _ => return Err(shape_error("input_ids", ids_t, tokens_dims.to_string())),
        };
        if task == Task::TextClassification {
            if c.pad_token_id.is_none() && batch != 1 {
                return Err(shape_error(
                    "input_ids",
                    ids_t,
                    "[1, sequence_length]: config.json sets no pad_token_id, so (as in transformers) the last \
                     token of each row cannot be found in a batch larger than 1"
                        .to_string(),
                ));
            }
            if seq == 0 {
                return Err(value_error("input_ids", "text classification needs at least one token per row"));
            }
        }
        let ids = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                usize::try_from(id).ok().filter(|&t| t < c.vocab_size).ok_or_else(|| {
                    value_error(
                        "input_ids",
                        format!(
                            "token id {id} at flat index {i} is outside the vocabulary (vocab_size {})",
                            c.vocab_size
                        ),
                    )
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;

        let (past, past_kv) = if task.with_past() {
            read_caches(&named, c, batch, contract::past_key, contract::past_value)?
        } else {
            (0, Vec::new())
        };
        let total = past + seq;
        if total > c.n_positions {
            return Err(value_error(
                "attention_mask",
                format!(
                    "past and current positions total {total}, more than n_positions ({}): transformers' causal mask \
                     covers only n_positions keys",
                    c.n_positions
                ),
            ));
        }

        let mask_t = named.take("attention_mask")?;
        let mask = int_data("attention_mask", mask_t)?;
        let lead: Vec<usize> = ids_t.shape[..lead_rank].to_vec();
        let mask_shape = [lead.clone(), vec![total]].concat();
        if mask_t.shape != mask_shape {
            let dims = if task.with_past() {
                format!("{mask_shape:?} (past_sequence_length {past} from the past key/values + sequence_length {seq})")
            } else {
                format!("{mask_shape:?} (the shape of input_ids)")
            };
            return Err(shape_error("attention_mask", mask_t, dims));
        }

        let positions = if task.takes_position_ids() {
            let t = named.take("position_ids")?;
            let values = int_data("position_ids", t)?;
            if t.shape != ids_t.shape {
                return Err(shape_error("position_ids", t, format!("{:?} (the shape of input_ids)", ids_t.shape)));
            }
            values
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    usize::try_from(p).ok().filter(|&p| p < c.n_positions).ok_or_else(|| {
                        value_error(
                            "position_ids",
                            format!("position {p} at flat index {i} is outside 0..{} (n_positions)", c.n_positions),
                        )
                    })
                })
                .collect::<Result<Vec<usize>, _>>()?
        } else {
            (0..batch * choices).flat_map(|_| 0..seq).collect()
        };

        let mc_token_ids = if task == Task::MultipleChoice {
            let t = named.take("mc_token_ids")?;
            let values = int_data("mc_token_ids", t)?;
            if t.shape[..] != lead[..] {
                return Err(shape_error("mc_token_ids", t, format!("{lead:?} ([batch_size, num_choices])")));
            }
            Some(values)
        } else {
            None
        };

        let encoder =
            if task.cross_attends(c) { Some(EncoderBatch::read(&named, c, batch, task.with_past())?) } else { None };
        Ok(Batch { batch, choices, seq, past, ids, mask, positions, past_kv, mc_token_ids, encoder })
    }
}

impl<'a> EncoderBatch<'a> {
    /// Checks the cross-attention inputs: encoder states, their mask and (with a cache) each layer's
    /// cached keys and values.
    pub(crate) fn read(
        named: &NamedInputs<'a>,
        c: &Gpt2Config,
        batch: usize,
        with_past: bool,
    ) -> Result<EncoderBatch<'a>, ReferenceError> {
        let states_t = named.take("encoder_hidden_states")?;
        let states = float_data("encoder_hidden_states", states_t)?;
        let len = match states_t.shape[..] {
            [b, len, e] if b == batch && e == c.n_embd => len,
            _ => {
                return Err(shape_error(
                    "encoder_hidden_states",
                    states_t,
                    format!("[{batch}, encoder_sequence_length, {}]", c.n_embd),
                ));
            }
        };
        let (enc_past, enc_past_kv) = if with_past {
            read_caches(named, c, batch, contract::past_cross_key, contract::past_cross_value)?
        } else {
            (0, Vec::new())
        };
        let mask_t = named.take("encoder_attention_mask")?;
        let mask = int_data("encoder_attention_mask", mask_t)?;
        if mask_t.shape[..] != [batch, enc_past + len] {
            return Err(shape_error(
                "encoder_attention_mask",
                mask_t,
                format!(
                    "[{batch}, {}] (cached encoder positions {enc_past} + encoder_sequence_length {len})",
                    enc_past + len
                ),
            ));
        }
        Ok(EncoderBatch { len, past: enc_past, states, mask, past_kv: enc_past_kv })
    }
}

/// Every layer's cached key and value inputs (named by `key(i)`, `value(i)`), checked to be
/// `[batch, n_head, past, head_dim]` with one past length; returns that length and the caches.
pub(crate) fn read_caches<'a>(
    named: &NamedInputs<'a>,
    c: &Gpt2Config,
    batch: usize,
    key: fn(usize) -> String,
    value: fn(usize) -> String,
) -> Result<(usize, Vec<LayerCache<'a>>), ReferenceError> {
    let cache = |name: String| -> Result<(usize, Cow<'a, [f32]>), ReferenceError> {
        let t = named.take(&name)?;
        let data = float_data(&name, t)?;
        match t.shape[..] {
            [b, h, len, d] if b == batch && h == c.n_head && d == c.head_dim => Ok((len, data)),
            _ => Err(shape_error(
                &name,
                t,
                format!(
                    "[{batch}, {}, past length, {}] ([batch_size, n_head, past length, head_dim])",
                    c.n_head, c.head_dim
                ),
            )),
        }
    };
    let mut past_len = None;
    let mut caches = Vec::with_capacity(c.n_layer);
    for i in 0..c.n_layer {
        let (k_len, k) = cache(key(i))?;
        let (v_len, v) = cache(value(i))?;
        let first = *past_len.get_or_insert(k_len);
        for (name, len) in [(key(i), k_len), (value(i), v_len)] {
            if len != first {
                return Err(value_error(&name, format!("its past length {len} differs from {}'s {first}", key(0))));
            }
        }
        caches.push((k, v));
    }
    Ok((past_len.unwrap_or(0), caches))
}

/// A run's inputs by name, checked against the names the task's export takes.
pub(crate) struct NamedInputs<'a> {
    pub(crate) map: BTreeMap<&'a str, &'a HostTensor>,
    pub(crate) task: &'static str,
    pub(crate) expected: String,
}

impl<'a> NamedInputs<'a> {
    pub(crate) fn new(
        model: &ReferenceModel,
        inputs: &[(&'a str, &'a HostTensor)],
    ) -> Result<NamedInputs<'a>, ReferenceError> {
        let names = model.input_names();
        let task = model.task.name();
        let expected = names.join(", ");
        let mut map = BTreeMap::new();
        for &(name, tensor) in inputs {
            if !names.iter().any(|n| n == name) {
                return Err(ReferenceError::UnknownInput { name: name.into(), task, expected });
            }
            if map.insert(name, tensor).is_some() {
                return Err(ReferenceError::DuplicateInput { name: name.into() });
            }
        }
        Ok(NamedInputs { map, task, expected })
    }

    pub(crate) fn take(&self, name: &str) -> Result<&'a HostTensor, ReferenceError> {
        self.map.get(name).copied().ok_or_else(|| ReferenceError::MissingInput {
            name: name.into(),
            task: self.task,
            expected: self.expected.clone(),
        })
    }
}

/// Int64 input data.
pub(crate) fn int_data<'a>(name: &str, t: &'a HostTensor) -> Result<&'a [i64], ReferenceError> {
    let data = t.as_i64().ok_or_else(|| ReferenceError::InputType {
        name: name.into(),
        expected: "int64",
        found: t.dtype_name(),
    })?;
    check_len(name, t, data.len())?;
    Ok(data)
}

/// Float input data as f32 (float16 inputs are widened).
pub(crate) fn float_data<'a>(name: &str, t: &'a HostTensor) -> Result<Cow<'a, [f32]>, ReferenceError> {
    let data = t.to_f32().ok_or_else(|| ReferenceError::InputType {
        name: name.into(),
        expected: "float (or float16)",
        found: t.dtype_name(),
    })?;
    check_len(name, t, data.len())?;
    Ok(data)
}

/// A tensor's data must fill its shape (its fields are public, so nothing else guarantees it).
pub(crate) fn check_len(name: &str, t: &HostTensor, len: usize) -> Result<(), ReferenceError> {
    let wanted = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if wanted == Some(len) {
        return Ok(());
    }
    let wanted = wanted.map_or_else(|| "more than memory holds".to_string(), |n| n.to_string());
    Err(value_error(name, format!("holds {len} values, but its shape {:?} needs {wanted}", t.shape)))
}

pub(crate) fn shape_error(name: &str, t: &HostTensor, expected: String) -> ReferenceError {
    ReferenceError::InputShape { name: name.into(), expected, found: t.shape.clone() }
}

pub(crate) fn value_error(name: &str, message: impl Into<String>) -> ReferenceError {
    ReferenceError::InputValue { name: name.into(), message: message.into() }
}

pub(crate) fn f32_tensor(shape: Vec<usize>, data: Vec<f32>) -> HostTensor {
    HostTensor { shape, data: HostData::F32(data) }
}
