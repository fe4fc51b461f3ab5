//! Cache tensors rebuilt from rows of other caches, right-aligned: the layout continuous batching
//! keeps (rows of different lengths left-padded under the attention mask). Every engine copies
//! through [`assemble_rows`], so ONNX Runtime's buffers, tract's values and host tensors agree.

use std::borrow::Cow;

use super::RuntimeError;
use super::engine::{CachePart, RowSource};
use crate::tensor::{HostData, HostTensor};

/// One source cache tensor: `[rows, heads, width, head_dim]` elements, row-major.
#[derive(Clone, Copy)]
pub struct Part<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub width: usize,
}

fn err(message: String) -> RuntimeError {
    RuntimeError::Input { name: "cache".into(), message }
}

/// Fills `dst` (`[sources.len(), heads, width, head_dim]`): row `i` is row `sources[i].row` of
/// part `sources[i].part`, its last `min(width, part.width)` positions placed at the end of the
/// row and zeros before them. Refuses sources and part sizes that do not fit, before copying.
pub fn assemble_rows<T: Copy + Default>(
    parts: &[Part<'_, T>],
    sources: &[RowSource],
    heads: usize,
    head_dim: usize,
    width: usize,
    dst: &mut [T],
) -> Result<(), RuntimeError> {
    let plane = |w: usize| heads.checked_mul(w).and_then(|x| x.checked_mul(head_dim));
    for (p, part) in parts.iter().enumerate() {
        let need = plane(part.width).and_then(|x| x.checked_mul(part.rows));
        if need != Some(part.data.len()) {
            return Err(err(format!(
                "part {p} holds {} values, not {} rows × {heads} heads × {} positions × {head_dim}",
                part.data.len(),
                part.rows,
                part.width
            )));
        }
    }
    if let Some(s) = sources.iter().find(|s| parts.get(s.part).is_none_or(|p| s.row >= p.rows)) {
        return Err(err(format!("row {} of part {} does not exist ({} parts)", s.row, s.part, parts.len())));
    }
    let row_len = plane(width).ok_or_else(|| err("cache size overflows".into()))?;
    if row_len.checked_mul(sources.len()) != Some(dst.len()) {
        return Err(err(format!("destination holds {} values, not {} rows of {row_len}", dst.len(), sources.len())));
    }
    for (i, s) in sources.iter().enumerate() {
        let part = parts[s.part];
        let keep = width.min(part.width);
        let (skip_src, skip_dst) = (part.width - keep, width - keep);
        for h in 0..heads {
            let src_at = ((s.row * heads + h) * part.width + skip_src) * head_dim;
            let dst_at = ((i * heads + h) * width) * head_dim;
            let dst_head = &mut dst[dst_at..dst_at + width * head_dim];
            dst_head[..skip_dst * head_dim].fill(T::default());
            dst_head[skip_dst * head_dim..].copy_from_slice(&part.data[src_at..src_at + keep * head_dim]);
        }
    }
    Ok(())
}

/// [`assemble_rows`] over host tensors of one float type, each `[rows, heads, width, head_dim]`.
pub fn assemble_host(parts: &[&HostTensor], sources: &[RowSource], width: usize) -> Result<HostTensor, RuntimeError> {
    let dims = |t: &HostTensor| match t.shape[..] {
        [rows, heads, w, dim] => Ok((rows, heads, w, dim)),
        _ => Err(err(format!("a cache tensor has shape {:?}, expected [rows, heads, positions, head_dim]", t.shape))),
    };
    let first = parts.first().ok_or_else(|| err("nothing to assemble".into()))?;
    let (_, heads, _, dim) = dims(first)?;
    let mut shaped = Vec::with_capacity(parts.len());
    for t in parts {
        let (rows, h, w, d) = dims(t)?;
        if (h, d) != (heads, dim) || t.elem() != first.elem() {
            return Err(err("cache parts disagree on heads, head size or element type".into()));
        }
        shaped.push((rows, w));
    }
    let shape = vec![sources.len(), heads, width, dim];
    let len = sources.len().saturating_mul(heads).saturating_mul(width).saturating_mul(dim);
    fn run<T: Copy + Default>(
        data: Vec<&[T]>,
        shaped: &[(usize, usize)],
        sources: &[RowSource],
        (heads, dim, width, len): (usize, usize, usize, usize),
    ) -> Result<Vec<T>, RuntimeError> {
        let parts: Vec<Part<'_, T>> =
            data.into_iter().zip(shaped).map(|(data, &(rows, width))| Part { data, rows, width }).collect();
        let mut out = vec![T::default(); len];
        assemble_rows(&parts, sources, heads, dim, width, &mut out)?;
        Ok(out)
    }
    let sizes = (heads, dim, width, len);
    let data = match &first.data {
        HostData::F32(_) => {
            HostData::F32(run(parts.iter().filter_map(|t| t.as_f32()).collect(), &shaped, sources, sizes)?)
        }
        HostData::F16(_) => HostData::F16(run(
            parts
                .iter()
                .filter_map(|t| match &t.data {
                    HostData::F16(v) => Some(v.as_slice()),
                    _ => None,
                })
                .collect(),
            &shaped,
            sources,
            sizes,
        )?),
        HostData::I64(_) => return Err(err("a cache of integers".into())),
    };
    Ok(HostTensor { shape, data })
}

/// [`Engine::assemble`](super::engine::Engine::assemble) for engines whose cache values read as
/// host tensors (`host` borrows or converts one): tensor `j` of the result from tensor `j` of
/// every part.
pub fn assemble_parts<V>(
    parts: &[CachePart<V>],
    sources: &[RowSource],
    width: usize,
    host: impl Fn(&V) -> Result<Cow<'_, HostTensor>, RuntimeError>,
) -> Result<Vec<HostTensor>, RuntimeError> {
    let tensors = parts.first().map_or(0, |p| p.cache.len());
    if parts.iter().any(|p| p.cache.len() != tensors) {
        return Err(err("cache parts with different numbers of tensors".into()));
    }
    (0..tensors)
        .map(|j| {
            let of_tensor = parts.iter().map(|p| host(&p.cache[j])).collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&HostTensor> = of_tensor.iter().map(|t| t.as_ref()).collect();
            assemble_host(&refs, sources, width)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(part: usize, row: usize) -> RowSource {
        RowSource { part, row }
    }

    #[test]
    fn rows_are_right_aligned_padded_and_trimmed() {
        // Part 0: 2 rows × 1 head × 3 positions × 2; part 1: 1 row × 2 positions.
        let a: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let b = vec![100.0, 101.0, 102.0, 103.0];
        let parts = [Part { data: &a, rows: 2, width: 3 }, Part { data: &b, rows: 1, width: 2 }];
        let mut out = vec![-1.0; 3 * 4 * 2];
        assemble_rows(&parts, &[src(1, 0), src(0, 1), src(0, 1)], 1, 2, 4, &mut out).unwrap();
        #[rustfmt::skip]
        assert_eq!(out, vec![
            0.0, 0.0, 0.0, 0.0, 100.0, 101.0, 102.0, 103.0,
            0.0, 0.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0,
            0.0, 0.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0,
        ]);
        // Narrower than the source: the leading positions go.
        let mut out = vec![-1.0; 2];
        assemble_rows(&parts, &[src(0, 0)], 1, 2, 1, &mut out).unwrap();
        assert_eq!(out, vec![4.0, 5.0]);
    }

    #[test]
    fn bad_sources_and_sizes_are_refused() {
        let a = vec![0.0f32; 6];
        let parts = [Part { data: &a, rows: 1, width: 3 }];
        let mut out = vec![0.0; 6];
        assert!(assemble_rows(&parts, &[src(0, 1)], 1, 2, 3, &mut out).is_err());
        assert!(assemble_rows(&parts, &[src(1, 0)], 1, 2, 3, &mut out).is_err());
        assert!(assemble_rows(&parts, &[src(0, 0)], 1, 2, 2, &mut out).is_err());
        let short = [Part { data: &a[..5], rows: 1, width: 3 }];
        assert!(assemble_rows(&short, &[src(0, 0)], 1, 2, 3, &mut out).is_err());
    }

    #[test]
    fn host_tensors_of_two_heads() {
        let t = HostTensor::f32(vec![1, 2, 1, 1], vec![1.0, 2.0]).unwrap();
        let out = assemble_host(&[&t], &[src(0, 0), src(0, 0)], 2).unwrap();
        assert_eq!(out.shape, vec![2, 2, 2, 1]);
        assert_eq!(out.as_f32().unwrap(), &[0.0, 1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 2.0]);
    }
}
