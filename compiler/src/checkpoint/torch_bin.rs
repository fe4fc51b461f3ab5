//! `pytorch_model.bin`: PyTorch's zip archive (`archive/data.pkl` plus one
//! `archive/data/<key>` file per storage), read without running any code: the
//! pickle goes through [`super::pickle`]'s restricted reader, and tensor bytes
//! are views into the memory-mapped archive (PyTorch stores entries
//! uncompressed), so nothing is copied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::pickle::{self, Value};
use super::safetensors::StDtype;
use super::weights::{WeightError, WeightSource};
use crate::ir::SharedBytes;

fn bad(path: &Path, message: impl Into<String>) -> WeightError {
    WeightError::Index { path: path.into(), message: message.into() }
}

// Offsets come from the file: `at + n` is checked, as an offset near usize::MAX would overflow.
fn u16_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at.checked_add(2)?).map(|s| u64::from(u16::from_le_bytes([s[0], s[1]])))
}
fn u32_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at.checked_add(4)?).map(|s| u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at.checked_add(8)?).map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

/// Entry name → byte range of its (stored) data in the archive.
fn zip_entries(map: &[u8], path: &Path) -> Result<BTreeMap<String, std::ops::Range<usize>>, WeightError> {
    let short = || bad(path, "not a zip archive (PyTorch checkpoints saved since 1.6 are zip files)");
    // End of central directory: the last signature within 64 KiB + 22 bytes of the end.
    let tail = map.len().saturating_sub(65_557);
    let eocd =
        (tail..map.len().saturating_sub(21)).rev().find(|&i| u32_at(map, i) == Some(0x0605_4b50)).ok_or_else(short)?;
    let (mut count, mut cd_offset) =
        (u16_at(map, eocd + 10).ok_or_else(short)?, u32_at(map, eocd + 16).ok_or_else(short)?);
    // Zip64: the locator just before the record points at the 64-bit record.
    if eocd >= 20 && u32_at(map, eocd - 20) == Some(0x0706_4b50) {
        let rec = usize::try_from(u64_at(map, eocd - 12).ok_or_else(short)?).map_err(|_| short())?;
        if u32_at(map, rec) != Some(0x0606_4b50) {
            return Err(bad(path, "corrupt zip64 end record"));
        }
        count = u64_at(map, rec + 32).ok_or_else(short)?;
        cd_offset = u64_at(map, rec + 48).ok_or_else(short)?;
    }
    let mut entries = BTreeMap::new();
    let mut at = usize::try_from(cd_offset).map_err(|_| short())?;
    for _ in 0..count {
        if u32_at(map, at) != Some(0x0201_4b50) {
            return Err(bad(path, "corrupt zip central directory"));
        }
        let field = |o: usize| u32_at(map, at + o).ok_or_else(short);
        let method = u16_at(map, at + 10).ok_or_else(short)?;
        let (mut size, mut offset) = (field(20)?, field(42)?);
        let uncompressed = field(24)?;
        let (name_len, extra_len, comment_len) = (
            u16_at(map, at + 28).ok_or_else(short)? as usize,
            u16_at(map, at + 30).ok_or_else(short)? as usize,
            u16_at(map, at + 32).ok_or_else(short)? as usize,
        );
        let name = map.get(at + 46..at + 46 + name_len).ok_or_else(short)?;
        let name = String::from_utf8_lossy(name).into_owned();
        // Zip64 extra field: 64-bit values for the fields stored as 0xFFFFFFFF, in order.
        let mut extra = map.get(at + 46 + name_len..at + 46 + name_len + extra_len).ok_or_else(short)?;
        while extra.len() >= 4 {
            let (id, len) = (u16_at(extra, 0).unwrap_or(0), u16_at(extra, 2).unwrap_or(0) as usize);
            let body = extra.get(4..4 + len).ok_or_else(short)?;
            if id == 1 {
                let mut k = 0;
                if uncompressed == 0xFFFF_FFFF {
                    k += 8;
                }
                if size == 0xFFFF_FFFF {
                    size = u64_at(body, k).ok_or_else(short)?;
                    k += 8;
                }
                if offset == 0xFFFF_FFFF {
                    offset = u64_at(body, k).ok_or_else(short)?;
                }
            }
            extra = &extra[(4 + len).min(extra.len())..];
        }
        if method != 0 {
            return Err(bad(
                path,
                format!("zip entry {name} is compressed (method {method}); PyTorch stores entries uncompressed"),
            ));
        }
        let local = usize::try_from(offset).map_err(|_| short())?;
        if u32_at(map, local) != Some(0x0403_4b50) {
            return Err(bad(path, format!("zip entry {name}: corrupt local header")));
        }
        let data = local
            + 30
            + u16_at(map, local + 26).ok_or_else(short)? as usize
            + u16_at(map, local + 28).ok_or_else(short)? as usize;
        let end = data.checked_add(usize::try_from(size).map_err(|_| short())?).filter(|&e| e <= map.len());
        let end = end.ok_or_else(|| bad(path, format!("zip entry {name} runs past the end of the file")))?;
        entries.insert(name, data..end);
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

fn storage_dtype(class: &str) -> Option<(StDtype, usize)> {
    Some(match class {
        "torch.FloatStorage" => (StDtype::F32, 4),
        "torch.HalfStorage" => (StDtype::F16, 2),
        "torch.BFloat16Storage" => (StDtype::BF16, 2),
        "torch.DoubleStorage" => (StDtype::F64, 8),
        "torch.LongStorage" => (StDtype::I64, 8),
        "torch.IntStorage" => (StDtype::I32, 4),
        "torch.ByteStorage" => (StDtype::U8, 1),
        "torch.BoolStorage" => (StDtype::Bool, 1),
        _ => return None,
    })
}

/// The tensors of a `pytorch_model.bin`.
pub struct TorchBinWeights {
    path: PathBuf,
    map: Arc<Mmap>,
    tensors: BTreeMap<String, (StDtype, Vec<usize>, std::ops::Range<usize>)>,
}

impl TorchBinWeights {
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let file = std::fs::File::open(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
        // SAFETY: read-only map of a checkpoint nothing else writes while we export.
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| bad(path, format!("cannot map: {e}")))?);
        let entries = zip_entries(&map, path)?;
        let (pkl_name, pkl) = entries
            .iter()
            .find(|(n, _)| n.ends_with("/data.pkl") || *n == "data.pkl")
            .ok_or_else(|| bad(path, "no data.pkl in the archive"))?;
        let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
        let root = pickle::load(&map[pkl.clone()]).map_err(|m| bad(path, m))?;
        let Value::Dict(items) = root else { return Err(bad(path, "the pickle holds no state dict")) };
        let mut tensors = BTreeMap::new();
        for (key, value) in items {
            let Value::Str(name) = key else { continue };
            let Value::Tensor { storage, offset, size, stride } = value else { continue };
            let Value::Storage { class, key, .. } = *storage else { continue };
            let (dtype, elem) = storage_dtype(&class)
                .ok_or_else(|| bad(path, format!("tensor `{name}`: unsupported storage {class}")))?;
            let shape: Vec<usize> = size
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<Result<_, _>>()
                .map_err(|_| bad(path, format!("tensor `{name}`: negative size {size:?}")))?;
            let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            let Some(len) = numel.and_then(|n| n.checked_mul(elem)) else {
                return Err(bad(path, format!("tensor `{name}`: size {size:?} has more than 2^64 bytes")));
            };
            // Row-major strides only (what state_dict() saves for GPT-2's parameters).
            let mut expected = vec![0i64; shape.len()];
            let mut acc = 1i64;
            for i in (0..shape.len()).rev() {
                expected[i] = acc;
                acc = acc.saturating_mul(size[i]);
            }
            if len > elem && stride != expected {
                return Err(bad(
                    path,
                    format!("tensor `{name}` is not contiguous (stride {stride:?}); re-save it contiguous"),
                ));
            }
            let data = entries
                .get(&format!("{prefix}data/{key}"))
                .ok_or_else(|| bad(path, format!("tensor `{name}`: storage {key} missing from the archive")))?;
            let start =
                usize::try_from(offset.max(0)).unwrap_or(usize::MAX).saturating_mul(elem).saturating_add(data.start);
            let end = start.saturating_add(len);
            if offset < 0 || end > data.end {
                return Err(bad(
                    path,
                    format!("tensor `{name}` ({len} bytes at element {offset}) lies outside its storage"),
                ));
            }
            tensors.insert(name, (dtype, shape, start..end));
        }
        if tensors.is_empty() {
            return Err(bad(path, "the state dict holds no tensors"));
        }
        Ok(TorchBinWeights { path: path.into(), map, tensors })
    }
}

impl WeightSource for TorchBinWeights {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn info(&self, name: &str) -> Option<(StDtype, Vec<usize>)> {
        self.tensors.get(name).map(|(d, s, _)| (*d, s.clone()))
    }
    fn bytes(&self, name: &str) -> Option<SharedBytes> {
        let (_, _, range) = self.tensors.get(name)?;
        SharedBytes::new(self.map.clone(), range.clone())
    }
    fn origin(&self, _name: &str) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip archive of stored (uncompressed) entries, as `torch.save` writes.
    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let (mut out, mut central) = (Vec::new(), Vec::new());
        for (name, data) in entries {
            let offset = out.len() as u32;
            let sizes = [(data.len() as u32).to_le_bytes(), (data.len() as u32).to_le_bytes()].concat();
            out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
            out.extend_from_slice(&[0; 10]); // version, flags, method 0, time, date
            out.extend_from_slice(&[0; 4]); // crc (not checked)
            out.extend_from_slice(&sizes);
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&[0; 2]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            central.extend_from_slice(&[0; 12]); // versions, flags, method 0, time, date
            central.extend_from_slice(&[0; 4]);
            central.extend_from_slice(&sizes);
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_offset = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_offset.to_le_bytes());
        out.extend_from_slice(&[0; 2]);
        out
    }

    fn open(bytes: &[u8]) -> Result<TorchBinWeights, WeightError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pytorch_model.bin");
        std::fs::write(&path, bytes).unwrap();
        TorchBinWeights::open(&path)
    }

    /// `{"w": _rebuild_tensor_v2(FloatStorage "0", 0, size, stride)}` with `size` and `stride`
    /// as pickled tuples.
    fn state_dict(size: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p: Vec<u8> = b"\x80\x02ccollections\nOrderedDict\n)RX\x01\x00\x00\x00w".to_vec();
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend_from_slice(
            b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ",
        );
        p.extend_from_slice(b"K\x00");
        p.extend_from_slice(size);
        p.extend_from_slice(stride);
        p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtRs.");
        p
    }

    #[test]
    fn reads_a_stored_tensor() {
        let pkl = state_dict(b"K\x02K\x03\x86", b"K\x03K\x01\x86");
        let data: Vec<u8> = (0..24).collect();
        let w = open(&zip(&[("archive/data.pkl", &pkl), ("archive/data/0", &data)])).unwrap();
        assert_eq!(w.info("w"), Some((StDtype::F32, vec![2, 3])));
        assert_eq!(w.bytes("w").unwrap().as_slice(), &data[..]);
    }

    #[test]
    fn size_products_past_usize_are_rejected() {
        // (2^32, 2^32): 2^64 elements wrapped to 0, which an empty storage "held".
        let pkl = state_dict(b"\x8a\x05\x00\x00\x00\x00\x01\x8a\x05\x00\x00\x00\x00\x01\x86", b"K\x01K\x01\x86");
        let e = open(&zip(&[("archive/data.pkl", &pkl), ("archive/data/0", &[])])).err().unwrap().to_string();
        assert!(e.contains("tensor `w`: size [4294967296, 4294967296] has more than 2^64 bytes"), "{e}");
    }

    #[test]
    fn a_real_state_dict_copies_far_less_than_the_pickle_budget() {
        // tiny-bin's 2621-byte pickle copies 62592 bytes of memoized values (24 per byte);
        // `pickle::load` allows 128 per byte, and 1 MiB more.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/heads/tiny-bin/pytorch_model.bin");
        let bytes = std::fs::read(path).unwrap();
        let entries = zip_entries(&bytes, Path::new(path)).unwrap();
        let pkl = &bytes[entries.iter().find(|(n, _)| n.ends_with("data.pkl")).unwrap().1.clone()];
        assert!(matches!(pickle::load_limited(pkl, 32 * pkl.len()), Ok(Value::Dict(_))));
        assert!(pickle::load_limited(pkl, 16 * pkl.len()).unwrap_err().contains("memoized values"));
    }

    #[test]
    fn offsets_near_usize_max_are_rejected() {
        // A zip64 locator pointing at u64::MAX - 1, then an empty end-of-central-directory record.
        let mut bytes = 0x0706_4b50u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 18]);
        let e = zip_entries(&bytes, Path::new("w.bin")).unwrap_err().to_string();
        assert!(e.contains("corrupt zip64 end record"), "{e}");
        // A central directory entry whose zip64 extra field puts its data at u64::MAX - 1.
        let mut bytes = zip(&[("a", b"x")]);
        let cd = bytes.len() - 22 - (46 + 1);
        bytes[cd + 42..cd + 46].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[cd + 30..cd + 32].copy_from_slice(&12u16.to_le_bytes());
        let mut extra = 1u16.to_le_bytes().to_vec();
        extra.extend_from_slice(&8u16.to_le_bytes());
        extra.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
        let eocd = bytes.split_off(cd + 47);
        bytes.extend_from_slice(&extra);
        bytes.extend_from_slice(&eocd);
        let n = bytes.len();
        bytes[n - 10..n - 6].copy_from_slice(&(47u32 + 12).to_le_bytes());
        let e = zip_entries(&bytes, Path::new("w.bin")).unwrap_err().to_string();
        assert!(e.contains("zip entry a: corrupt local header"), "{e}");
    }
}
