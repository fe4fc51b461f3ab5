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

/// Cache rows `stride` positions apart (a buffer with room for more positions than it holds):
/// `[rows, heads, stride, head_dim]`, row-major.
#[derive(Clone, Copy)]
pub struct Strided<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub stride: usize,
}

/// Sizes of the rows [`copy_rows_left`] and [`move_rows_left`] copy.
#[derive(Clone, Copy, Debug)]
pub struct RowShape {
    pub heads: usize,
    pub head_dim: usize,
    /// Positions per row in the destination (its row stride).
    pub stride: usize,
    /// Positions copied from the start of each row.
    pub width: usize,
}

impl RowShape {
    fn row_len(&self) -> Option<usize> {
        self.heads.checked_mul(self.stride)?.checked_mul(self.head_dim)
    }
}

/// Left-aligned copies between buffers: for each `(from, to)`, row `to` of `dst` (rows
/// `shape.stride` positions apart) gets the first `min(shape.width, src.stride)` positions of row
/// `from` of `src`; the rest of the row is left as it is. Refuses rows outside either buffer.
pub fn copy_rows_left<T: Copy>(
    src: Strided<'_, T>,
    dst: &mut [T],
    pairs: &[(usize, usize)],
    shape: RowShape,
) -> Result<(), RuntimeError> {
    let RowShape { heads, head_dim, stride, width } = shape;
    let keep = width.min(src.stride).min(stride);
    let src_row = heads.checked_mul(src.stride).and_then(|x| x.checked_mul(head_dim));
    let dst_row = shape.row_len().ok_or_else(|| err("cache size overflows".into()))?;
    if src_row.and_then(|r| r.checked_mul(src.rows)).is_none_or(|need| src.data.len() < need) {
        return Err(err(format!("a source of {} values cannot hold {} rows", src.data.len(), src.rows)));
    }
    if let Some(&(from, to)) =
        pairs.iter().find(|&&(f, t)| f >= src.rows || (t + 1).saturating_mul(dst_row) > dst.len())
    {
        return Err(err(format!("row {from} → row {to} is outside the cache")));
    }
    for &(from, to) in pairs {
        for h in 0..heads {
            let s = ((from * heads + h) * src.stride) * head_dim;
            let d = ((to * heads + h) * stride) * head_dim;
            dst[d..d + keep * head_dim].copy_from_slice(&src.data[s..s + keep * head_dim]);
        }
    }
    Ok(())
}

/// Left-aligned moves inside one buffer (rows `shape.stride` positions apart): for each
/// `(from, to)`, row `to` gets the first `shape.width` positions row `from` held before any move
/// (sources may repeat, destinations may be sources of other moves). Rows read after being
/// written are set aside first, so only rows that move are copied.
pub fn move_rows_left<T: Copy>(buf: &mut [T], moves: &[(usize, usize)], shape: RowShape) -> Result<(), RuntimeError> {
    move_row_tails(buf, moves, shape, 0)
}

/// [`move_rows_left`] of positions `first..shape.width` only, for rows whose first `first`
/// positions already agree with the rows that replace them (beams of one prompt share the
/// prompt's positions): what stays equal is not copied.
pub fn move_row_tails<T: Copy>(
    buf: &mut [T],
    moves: &[(usize, usize)],
    shape: RowShape,
    first: usize,
) -> Result<(), RuntimeError> {
    let RowShape { heads, head_dim, stride, width } = shape;
    let width = width.min(stride);
    let first = first.min(width);
    let row_len = shape.row_len().ok_or_else(|| err("cache size overflows".into()))?;
    if let Some(&(from, to)) = moves.iter().find(|&&(f, t)| (f.max(t) + 1).saturating_mul(row_len) > buf.len()) {
        return Err(err(format!("row {from} → row {to} is outside the cache")));
    }
    let moving: Vec<(usize, usize)> = moves.iter().copied().filter(|(f, t)| f != t).collect();
    let written: std::collections::HashSet<usize> = moving.iter().map(|&(_, t)| t).collect();
    // Where head `h` of `row`'s copied positions start, and how many values they hold.
    let at = |row: usize, h: usize| ((row * heads + h) * stride + first) * head_dim;
    let tail_len = (width - first) * head_dim;
    let mut aside: std::collections::HashMap<usize, Vec<T>> = std::collections::HashMap::new();
    for &(from, _) in &moving {
        if written.contains(&from) && !aside.contains_key(&from) {
            let mut copy = Vec::with_capacity(heads * tail_len);
            for h in 0..heads {
                copy.extend_from_slice(&buf[at(from, h)..at(from, h) + tail_len]);
            }
            aside.insert(from, copy);
        }
    }
    for &(from, to) in &moving {
        for h in 0..heads {
            let d = at(to, h);
            match aside.get(&from) {
                Some(copy) => buf[d..d + tail_len].copy_from_slice(&copy[h * tail_len..(h + 1) * tail_len]),
                None => buf.copy_within(at(from, h)..at(from, h) + tail_len, d),
            }
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
        HostData::I64(_) | HostData::I32(_) => return Err(err("a cache of integers".into())),
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
    fn left_aligned_copies_keep_each_rows_start() {
        // 2 rows × 2 heads × stride 3 × dim 1; copy 2 positions into a buffer of stride 4.
        let src: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let mut dst = vec![-1.0; 3 * 2 * 4];
        let shape = RowShape { heads: 2, head_dim: 1, stride: 4, width: 2 };
        copy_rows_left(Strided { data: &src, rows: 2, stride: 3 }, &mut dst, &[(1, 0), (0, 2)], shape).unwrap();
        #[rustfmt::skip]
        assert_eq!(dst, vec![
            6.0, 7.0, -1.0, -1.0, 9.0, 10.0, -1.0, -1.0,
            -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0,
            0.0, 1.0, -1.0, -1.0, 3.0, 4.0, -1.0, -1.0,
        ]);
        assert!(copy_rows_left(Strided { data: &src, rows: 2, stride: 3 }, &mut dst, &[(2, 0)], shape).is_err());
        assert!(copy_rows_left(Strided { data: &src, rows: 2, stride: 3 }, &mut dst, &[(0, 3)], shape).is_err());
    }

    #[test]
    fn moves_in_place_read_every_source_before_it_is_overwritten() {
        // 4 rows × 1 head × stride 2 × dim 1, rows hold [10r, 10r + 1].
        let start: Vec<f32> = (0..4).flat_map(|r| [10.0 * r as f32, 10.0 * r as f32 + 1.0]).collect();
        let shape = RowShape { heads: 1, head_dim: 1, stride: 2, width: 2 };
        // A rotation, a duplicate and a row left in place, against a copy made through a second buffer.
        let moves = [(3, 0), (0, 1), (1, 2), (1, 3)];
        let mut buf = start.clone();
        move_rows_left(&mut buf, &moves, shape).unwrap();
        let mut want = start.clone();
        for &(from, to) in &moves {
            want[to * 2..to * 2 + 2].copy_from_slice(&start[from * 2..from * 2 + 2]);
        }
        assert_eq!(buf, want);
        assert_eq!(buf, vec![30.0, 31.0, 0.0, 1.0, 10.0, 11.0, 10.0, 11.0]);
        // Width 1 moves the first position only.
        let mut buf = start.clone();
        move_rows_left(&mut buf, &[(2, 0)], RowShape { width: 1, ..shape }).unwrap();
        assert_eq!(&buf[..2], &[20.0, 1.0]);
        assert!(move_rows_left(&mut buf, &[(4, 0)], shape).is_err());
    }

    #[test]
    fn tail_moves_leave_the_shared_positions_alone() {
        // 3 rows × 2 heads × stride 4 × dim 1 holding 3 positions; value 100r + 10h + p.
        let start: Vec<f32> =
            (0..3).flat_map(|r| (0..2).flat_map(move |h| (0..4).map(move |p| (100 * r + 10 * h + p) as f32))).collect();
        let shape = RowShape { heads: 2, head_dim: 1, stride: 4, width: 3 };
        let moves = [(2, 0), (0, 1), (1, 2)];
        let mut buf = start.clone();
        move_row_tails(&mut buf, &moves, shape, 1).unwrap();
        // Position 0 (shared) and position 3 (past the width) keep each row's own values.
        let mut want = start.clone();
        for &(from, to) in &moves {
            for h in 0..2 {
                for p in 1..3 {
                    want[(to * 2 + h) * 4 + p] = start[(from * 2 + h) * 4 + p];
                }
            }
        }
        assert_eq!(buf, want);
        assert_eq!(&buf[..8], &[0.0, 201.0, 202.0, 3.0, 10.0, 211.0, 212.0, 13.0]);
        // A shared prefix past the width copies nothing.
        let mut buf = start.clone();
        move_row_tails(&mut buf, &moves, shape, 9).unwrap();
        assert_eq!(buf, start);
        assert!(move_row_tails(&mut buf, &[(3, 0)], shape, 1).is_err());
    }

    #[test]
    fn host_tensors_of_two_heads() {
        let t = HostTensor::f32(vec![1, 2, 1, 1], vec![1.0, 2.0]).unwrap();
        let out = assemble_host(&[&t], &[src(0, 0), src(0, 0)], 2).unwrap();
        assert_eq!(out.shape, vec![2, 2, 2, 1]);
        assert_eq!(out.as_f32().unwrap(), &[0.0, 1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 2.0]);
    }
}
