//! The prefix cache: keys and values of prompts prefilled before, on the host, so a prompt that
//! starts with the same tokens (a system prompt, a few-shot header) computes only the rest.
//!
//! Attention is causal, so the cache of a prompt's first `m` positions is the first `m`
//! positions of the whole prompt's cache: one entry serves every prefix of its tokens. Lookup
//! takes the entry sharing the longest prefix with the new prompt; entries are evicted least
//! recently used first once their bytes pass the budget.

use crate::tensor::{HostData, HostTensor};

struct Entry {
    /// Entries serve prompts of their own partition only.
    partition: u64,
    tokens: Vec<u32>,
    /// One row per tensor, `[1, heads, tokens.len(), head_dim]`.
    cache: Vec<HostTensor>,
    bytes: u64,
    used: u64,
}

pub(super) struct PrefixCache {
    entries: Vec<Entry>,
    budget: u64,
    bytes: u64,
    clock: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The first `m` positions of a `[1, heads, width, head_dim]` tensor.
fn leading(t: &HostTensor, m: usize) -> HostTensor {
    let [rows, heads, width, dim] = t.shape[..] else { return t.clone() };
    let m = m.min(width);
    fn cut<T: Copy>(v: &[T], rows: usize, heads: usize, width: usize, dim: usize, m: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(rows * heads * m * dim);
        for plane in 0..rows * heads {
            out.extend_from_slice(&v[plane * width * dim..(plane * width + m) * dim]);
        }
        out
    }
    let data = match &t.data {
        HostData::F32(v) => HostData::F32(cut(v, rows, heads, width, dim, m)),
        HostData::F16(v) => HostData::F16(cut(v, rows, heads, width, dim, m)),
        HostData::I64(v) => HostData::I64(cut(v, rows, heads, width, dim, m)),
        HostData::I32(v) => HostData::I32(cut(v, rows, heads, width, dim, m)),
    };
    HostTensor { shape: vec![rows, heads, m, dim], data }
}

impl PrefixCache {
    pub fn new(budget: u64) -> PrefixCache {
        PrefixCache { entries: Vec::new(), budget, bytes: 0, clock: 0 }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The cache of the longest known prefix of `tokens`, leaving at least one token to compute
    /// (the pass that yields the next token's logits); `None` when nothing is shared.
    pub fn lookup(&mut self, partition: u64, tokens: &[u32]) -> Option<(usize, Vec<HostTensor>)> {
        let limit = tokens.len().saturating_sub(1);
        let (best, len) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.partition == partition)
            .map(|(i, e)| (i, common_prefix(&e.tokens, tokens).min(limit)))
            .max_by_key(|&(i, len)| (len, std::cmp::Reverse(i)))?;
        if len == 0 {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.used = self.clock;
        Some((len, entry.cache.iter().map(|t| leading(t, len)).collect()))
    }

    /// Whether an entry already holds every position of `tokens`.
    pub fn covers(&self, partition: u64, tokens: &[u32]) -> bool {
        self.entries.iter().any(|e| e.partition == partition && e.tokens.starts_with(tokens))
    }

    /// Keeps the cache of `tokens` (`[1, heads, tokens.len(), head_dim]` per tensor), dropping
    /// entries it covers, then the least recently used ones past the budget.
    pub fn insert(&mut self, partition: u64, tokens: &[u32], cache: Vec<HostTensor>, bytes: u64) {
        if bytes > self.budget || tokens.is_empty() {
            return;
        }
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.partition == partition && e.tokens.starts_with(tokens)) {
            // Already covered by a longer entry.
            e.used = self.clock;
            return;
        }
        let before = self.entries.len();
        self.entries.retain(|e| e.partition != partition || !tokens.starts_with(&e.tokens));
        if self.entries.len() != before {
            self.bytes = self.entries.iter().map(|e| e.bytes).sum();
        }
        while self.bytes + bytes > self.budget {
            let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.used).map(|(i, _)| i) else {
                break;
            };
            self.bytes -= self.entries.swap_remove(oldest).bytes;
        }
        self.bytes += bytes;
        self.entries.push(Entry { partition, tokens: tokens.to_vec(), cache, bytes, used: self.clock });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-layer cache whose value at position p is p (two heads, head size 1).
    fn cache(len: usize) -> Vec<HostTensor> {
        let data: Vec<f32> = (0..2).flat_map(|_| (0..len).map(|p| p as f32)).collect();
        vec![HostTensor::f32(vec![1, 2, len, 1], data).unwrap()]
    }

    #[test]
    fn longest_prefix_wins_and_one_token_is_left() {
        let mut c = PrefixCache::new(1000);
        c.insert(0, &[1, 2, 3, 4], cache(4), 40);
        c.insert(0, &[1, 2, 9], cache(3), 30);
        let (len, hit) = c.lookup(0, &[1, 2, 3, 7, 8]).unwrap();
        assert_eq!(len, 3);
        assert_eq!(hit[0].shape, vec![1, 2, 3, 1]);
        assert_eq!(hit[0].as_f32().unwrap(), &[0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
        // The whole prompt is cached: the last token is still computed.
        assert_eq!(c.lookup(0, &[1, 2, 3, 4]).unwrap().0, 3);
        assert!(c.lookup(0, &[5, 1, 2]).is_none());
        assert!(c.lookup(0, &[1]).is_none());
    }

    #[test]
    fn covered_entries_merge_and_the_budget_evicts_the_least_recent() {
        let mut c = PrefixCache::new(100);
        c.insert(0, &[1, 2], cache(2), 20);
        c.insert(0, &[1, 2, 3], cache(3), 30);
        assert_eq!((c.entries.len(), c.bytes()), (1, 30));
        c.insert(0, &[1, 2], cache(2), 20);
        assert_eq!((c.entries.len(), c.bytes()), (1, 30));
        c.insert(0, &[7, 8, 9, 10], cache(4), 40);
        c.lookup(0, &[1, 2, 3, 4]);
        c.insert(0, &[5, 6, 7, 8], cache(4), 40);
        // [7, 8, 9, 10] was used least recently.
        assert_eq!(c.bytes(), 70);
        assert!(c.lookup(0, &[7, 8, 9, 10, 11]).is_none());
        assert_eq!(c.lookup(0, &[1, 2, 3, 4]).unwrap().0, 3);
        c.insert(0, &[4; 20], cache(20), 200);
        assert_eq!(c.bytes(), 70, "an entry past the whole budget is not kept");
    }

    #[test]
    fn a_partition_sees_only_its_own_entries() {
        let mut c = PrefixCache::new(1000);
        c.insert(1, &[1, 2, 3, 4], cache(4), 40);
        assert!(c.lookup(2, &[1, 2, 3, 4, 5]).is_none(), "another partition's prefix is not reused");
        assert!(!c.covers(2, &[1, 2, 3]));
        // The same tokens in another partition are an entry of their own, not merged.
        c.insert(2, &[1, 2, 3], cache(3), 30);
        assert_eq!(c.bytes(), 70);
        assert_eq!(c.lookup(1, &[1, 2, 3, 4, 5]).unwrap().0, 4);
        assert_eq!(c.lookup(2, &[1, 2, 3, 4, 5]).unwrap().0, 3);
    }
}
