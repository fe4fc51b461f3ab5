//! A restricted reader for the pickles inside PyTorch checkpoints (`pytorch_model.bin`).
//!
//! It interprets the pickle opcodes as data and never runs code: the only
//! callables it accepts are the tensor-rebuild functions `torch.save` writes
//! (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`), `collections.OrderedDict`,
//! and the storage classes named in persistent ids (`torch.FloatStorage`, …). Any other
//! global (`os.system`, `builtins.eval`, …) is refused with an error naming it, before
//! anything is called — nothing is ever called, in fact: "calls" build values.

use std::collections::HashMap;

/// A value on the unpickler's stack.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Key/value pairs in insertion order (dicts and OrderedDicts).
    Dict(Vec<(Value, Value)>),
    /// An accepted global, as `module.name`.
    Global(String),
    /// A storage reference from a persistent id: (storage class, key, element count).
    Storage {
        class: String,
        key: String,
        numel: i64,
    },
    /// A rebuilt tensor view of a storage.
    Tensor {
        storage: Box<Value>,
        offset: i64,
        size: Vec<i64>,
        stride: Vec<i64>,
    },
    /// The mark that MARK pushes.
    Mark,
}

/// The globals a PyTorch state dict needs; everything else is refused.
const ALLOWED: [&str; 4] =
    ["collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "torch.Size"];

fn allowed(global: &str) -> bool {
    ALLOWED.contains(&global)
        || (global.starts_with("torch.") && global.ends_with("Storage") && !global[6..].contains('.'))
}

fn ints(v: &Value, what: &str) -> Result<Vec<i64>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Ok(*n),
                other => Err(format!("{what}: expected integers, found {other:?}")),
            })
            .collect(),
        other => Err(format!("{what}: expected a tuple of integers, found {other:?}")),
    }
}

/// Applies an accepted callable to its arguments (as data).
fn call(func: &Value, args: Value) -> Result<Value, String> {
    let Value::Global(name) = func else {
        return Err(format!("the pickle calls {func:?}, which is not an accepted function"));
    };
    let Value::Tuple(args) = args else { return Err(format!("{name}: arguments must be a tuple")) };
    match name.as_str() {
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        "torch.Size" => Ok(args.into_iter().next().unwrap_or(Value::Tuple(Vec::new()))),
        "torch._utils._rebuild_tensor_v2" => {
            let [storage, offset, size, stride, ..] = args.as_slice() else {
                return Err(format!(
                    "{name}: expected (storage, offset, size, stride, ...), got {} arguments",
                    args.len()
                ));
            };
            let Value::Storage { .. } = storage else { return Err(format!("{name}: first argument is not a storage")) };
            let Value::Int(offset) = offset else { return Err(format!("{name}: storage offset is not an integer")) };
            Ok(Value::Tensor {
                storage: Box::new(storage.clone()),
                offset: *offset,
                size: ints(size, "tensor size")?,
                stride: ints(stride, "tensor stride")?,
            })
        }
        // nn.Parameter(tensor, requires_grad, hooks): the tensor.
        "torch._utils._rebuild_parameter" => args.into_iter().next().ok_or_else(|| format!("{name}: no tensor")),
        other => Err(format!("the pickle calls `{other}`, which a PyTorch checkpoint does not need")),
    }
}

/// Bytes of memo copies allowed per byte of pickle, on top of [`COPY_BUDGET_MIN`]: a state dict's
/// pickle copies about 24 per byte (each entry's key, tuples and tensor once or twice).
const COPY_BUDGET_PER_BYTE: usize = 128;
/// Bytes of memo copies any pickle may make.
const COPY_BUDGET_MIN: usize = 1 << 20;

/// Approximate heap bytes of `v`, counting at most a little past `limit`: the memo copies values
/// where Python shares them, so each copy is charged against a budget.
fn copy_cost(v: &Value, limit: usize) -> usize {
    let mut cost = 0usize;
    let mut pending = vec![v];
    while let Some(v) = pending.pop() {
        cost = cost.saturating_add(std::mem::size_of::<Value>());
        match v {
            Value::Str(s) | Value::Global(s) => cost = cost.saturating_add(s.len()),
            Value::Bytes(b) => cost = cost.saturating_add(b.len()),
            Value::Storage { class, key, .. } => cost = cost.saturating_add(class.len() + key.len()),
            Value::Tuple(items) | Value::List(items) => pending.extend(items),
            Value::Dict(pairs) => pending.extend(pairs.iter().flat_map(|(k, v)| [k, v])),
            Value::Tensor { storage, size, stride, .. } => {
                cost = cost.saturating_add(8 * (size.len() + stride.len()));
                pending.push(storage);
            }
            Value::None | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Mark => {}
        }
        if cost > limit {
            break;
        }
    }
    cost
}

/// Reads a pickle (protocol 2 to 5, as `torch.save` writes) into a value.
pub fn load(data: &[u8]) -> Result<Value, String> {
    load_limited(data, COPY_BUDGET_MIN.saturating_add(data.len().saturating_mul(COPY_BUDGET_PER_BYTE)))
}

/// [`load`], with memo copies limited to `copy_limit` bytes.
pub(super) fn load_limited(data: &[u8], copy_limit: usize) -> Result<Value, String> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    // Memo reads and writes copy values: without a bound, a few hundred bytes that read an entry
    // twice, pair the copies and store the pair again build a value of 2^40 nodes.
    let mut budget = copy_limit;
    let mut copy = |v: &Value| -> Result<Value, String> {
        let cost = copy_cost(v, budget);
        budget = budget.checked_sub(cost).ok_or_else(|| {
            format!(
                "the pickle copies more than {copy_limit} bytes of memoized values (a {}-byte PyTorch state dict \
                 needs far less); refusing a pickle built to exhaust memory",
                data.len()
            )
        })?;
        Ok(v.clone())
    };
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = pos.checked_add(n).filter(|&e| e <= data.len()).ok_or("the pickle ends early")?;
        let s = &data[*pos..end];
        *pos = end;
        Ok(s)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    fn pop(stack: &mut Vec<Value>) -> Result<Value, String> {
        stack.pop().ok_or_else(|| "the pickle pops an empty stack".to_string())
    }
    fn pop_mark(stack: &mut Vec<Value>) -> Result<Vec<Value>, String> {
        let at = stack.iter().rposition(|v| *v == Value::Mark).ok_or("the pickle has no MARK to pop to")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    }
    fn dict_insert(target: &mut Value, pairs: Vec<Value>) -> Result<(), String> {
        let Value::Dict(entries) = target else { return Err("SETITEM(S) on a value that is not a dict".into()) };
        if !pairs.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            entries.retain(|(old, _)| *old != k);
            entries.push((k, v));
        }
        Ok(())
    }
    loop {
        let op = *take(&mut pos, 1)?.first().ok_or("the pickle ends early")?;
        match op {
            0x80 => {
                take(&mut pos, 1)?; // PROTO
            }
            0x95 => {
                take(&mut pos, 8)?; // FRAME
            }
            b'.' => return pop(&mut stack), // STOP
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack
                .push(Value::Int(i64::from(i32::from_le_bytes(take(&mut pos, 4)?.try_into().map_err(|_| "BININT")?)))),
            b'K' => stack.push(Value::Int(i64::from(take(&mut pos, 1)?[0]))),
            b'M' => {
                let b = take(&mut pos, 2)?;
                stack.push(Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))));
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes
                let n = take(&mut pos, 1)?[0] as usize;
                let b = take(&mut pos, n)?;
                if n > 8 {
                    return Err("an integer too large for a tensor size".into());
                }
                let mut v: i64 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= i64::from(byte) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => {
                let b = take(&mut pos, 8)?;
                stack.push(Value::Float(f64::from_be_bytes(b.try_into().map_err(|_| "BINFLOAT")?)));
            }
            b'X' | 0x8c | 0x8d => {
                // BINUNICODE (u32 length), SHORT_BINUNICODE (u8), BINUNICODE8 (u64)
                let n = match op {
                    b'X' => u32_at(take(&mut pos, 4)?) as usize,
                    0x8c => take(&mut pos, 1)?[0] as usize,
                    _ => usize::try_from(u64::from_le_bytes(take(&mut pos, 8)?.try_into().map_err(|_| "BINUNICODE8")?))
                        .map_err(|_| "string too long")?,
                };
                let s = std::str::from_utf8(take(&mut pos, n)?).map_err(|_| "a pickle string is not UTF-8")?;
                stack.push(Value::Str(s.to_string()));
            }
            b'C' | b'B' => {
                let n = if op == b'C' { take(&mut pos, 1)?[0] as usize } else { u32_at(take(&mut pos, 4)?) as usize };
                stack.push(Value::Bytes(take(&mut pos, n)?.to_vec()));
            }
            b'c' => {
                // GLOBAL "module\nname\n"
                let mut line = || -> Result<String, String> {
                    let rest = &data[pos..];
                    let end = rest.iter().position(|&c| c == b'\n').ok_or("GLOBAL without a newline")?;
                    let s = std::str::from_utf8(&rest[..end]).map_err(|_| "GLOBAL is not UTF-8")?.to_string();
                    pos += end + 1;
                    Ok(s)
                };
                let (module, name) = (line()?, line()?);
                let global = format!("{module}.{name}");
                if !allowed(&global) {
                    return Err(format!(
                        "the pickle references `{global}`, which a PyTorch checkpoint does not need; refusing to load it (nothing was run)"
                    ));
                }
                stack.push(Value::Global(global));
            }
            0x93 => {
                // STACK_GLOBAL
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err("STACK_GLOBAL needs two strings".into());
                };
                let global = format!("{module}.{name}");
                if !allowed(&global) {
                    return Err(format!(
                        "the pickle references `{global}`, which a PyTorch checkpoint does not need; refusing to load it (nothing was run)"
                    ));
                }
                stack.push(Value::Global(global));
            }
            b'q' => {
                let k = u64::from(take(&mut pos, 1)?[0]);
                memo.insert(k, copy(stack.last().ok_or("BINPUT on an empty stack")?)?);
            }
            b'r' => {
                let k = u64::from(u32_at(take(&mut pos, 4)?));
                memo.insert(k, copy(stack.last().ok_or("LONG_BINPUT on an empty stack")?)?);
            }
            0x94 => {
                let k = memo.len() as u64;
                memo.insert(k, copy(stack.last().ok_or("MEMOIZE on an empty stack")?)?);
            }
            b'h' | b'j' => {
                let k =
                    if op == b'h' { u64::from(take(&mut pos, 1)?[0]) } else { u64::from(u32_at(take(&mut pos, 4)?)) };
                stack.push(copy(memo.get(&k).ok_or_else(|| format!("the pickle reads memo {k}, never stored"))?)?);
            }
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("TUPLE on a short stack".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(items));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err("APPEND to a value that is not a list".into()),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err("APPENDS to a value that is not a list".into()),
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                dict_insert(stack.last_mut().ok_or("SETITEM on an empty stack")?, vec![k, v])?;
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                dict_insert(stack.last_mut().ok_or("SETITEMS on an empty stack")?, items)?;
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let func = pop(&mut stack)?;
                stack.push(call(&func, args)?);
            }
            b'b' => {
                // BUILD: state for the object below (OrderedDict metadata); kept as data, ignored.
                pop(&mut stack)?;
            }
            b'Q' => {
                // BINPERSID: ('storage', class, key, location, numel)
                let pid = pop(&mut stack)?;
                let Value::Tuple(items) = pid else { return Err("a persistent id is not a tuple".into()) };
                match items.as_slice() {
                    [Value::Str(kind), Value::Global(class), Value::Str(key), _location, Value::Int(numel)]
                        if kind == "storage" =>
                    {
                        stack.push(Value::Storage { class: class.clone(), key: key.clone(), numel: *numel });
                    }
                    other => return Err(format!("unexpected persistent id {other:?}")),
                }
            }
            other => return Err(format!("the pickle uses opcode 0x{other:02x}, which a PyTorch state dict does not")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_any_other_global() {
        // pickle.dumps of os.system("true") by a malicious writer: GLOBAL 'os system', then REDUCE.
        let evil = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
        let err = load(evil).unwrap_err();
        assert!(err.contains("`os.system`") && err.contains("nothing was run"), "{err}");
        let evil = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x04eval\x93.";
        assert!(load(evil).unwrap_err().contains("`builtins.eval`"));
        // torch.Something that is not a storage class.
        assert!(load(b"ctorch\nload\n.").is_err());
    }

    #[test]
    fn memo_copies_cannot_blow_up() {
        // An empty list, memoized as 0; then 64 times: read 0 twice, pair the copies, memoize
        // the pair as 0. 390 bytes that would build a value of 2^64 nodes by copying
        // (fuzz/regressions/torch_pickle/memo-copies-blow-up.pkl).
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..64 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        let e = load(&p).unwrap_err();
        assert!(e.contains("copies more than") && e.contains("memoized values"), "{e}");
        // A few levels are fine: 2^4 empty lists.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..4 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        assert!(matches!(load(&p), Ok(Value::Tuple(_))));
    }

    #[test]
    fn reads_a_state_dict_shape() {
        // OrderedDict() with one entry "w" → _rebuild_tensor_v2(storage, 0, (2, 3), (3, 1), False, OrderedDict())
        let mut p: Vec<u8> = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02".to_vec();
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\nq\x03(");
        p.extend_from_slice(b"(X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x06tq\x08Q");
        p.extend_from_slice(
            b"K\x00K\x02K\x03\x86q\tK\x03K\x01\x86q\n\x89ccollections\nOrderedDict\nq\x0b)Rq\x0ctq\rRq\x0es.",
        );
        let Value::Dict(entries) = load(&p).unwrap() else { panic!("a dict") };
        assert_eq!(entries.len(), 1);
        let (Value::Str(k), Value::Tensor { size, stride, offset, storage }) = &entries[0] else {
            panic!("{entries:?}")
        };
        assert_eq!((k.as_str(), size.as_slice(), stride.as_slice(), *offset), ("w", &[2i64, 3][..], &[3i64, 1][..], 0));
        assert_eq!(**storage, Value::Storage { class: "torch.FloatStorage".into(), key: "0".into(), numel: 6 });
    }
}
