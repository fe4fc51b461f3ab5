//! The limits one generate() call is held to, checked before anything is
//! allocated: how many rows decode together, and the bytes those rows will
//! hold (the key/value cache in every buffer set the engine keeps, the
//! logits the driver copies, the token rows). Each refusal names the setting
//! that asked for too much.
//!
//! | what | limit |
//! |---|---|
//! | rows decoding together (prompts × `num_return_sequences` when sampling, prompts × `num_beams` with beams) | [`MAX_ROWS`] = 65,536 |
//! | bytes a call plans to hold | [`MAX_BYTES`] = 2^40, and at most the machine's memory ([`machine_memory`]) |
//! | token counts (`max_length`, `max_new_tokens`, `min_length`, `min_new_tokens`, `top_k`, `no_repeat_ngram_size`, the decay start) | [`MAX_COUNT`] = 2^32 − 1 |
//! | ids in one list setting (`eos_token_id`, `suppress_tokens`, all of `bad_words_ids`, …) | [`MAX_LIST_IDS`] = 2^20 |
//! | `stop_strings` | [`MAX_STOP_STRINGS`] strings of at most [`MAX_STOP_STRING_BYTES`] bytes |
//! | durations (`max_time`) | saturate: a deadline past what the clock can represent never fires |

use super::GenerateError;

/// Rows decoding together in one call.
pub const MAX_ROWS: usize = 1 << 16;
/// Bytes one call may plan to hold, whatever the machine.
pub const MAX_BYTES: u64 = 1 << 40;
/// Token counts a setting may hold.
pub const MAX_COUNT: usize = u32::MAX as usize;
/// Token ids in one list setting (nested lists counted together).
pub const MAX_LIST_IDS: usize = 1 << 20;
/// Tokens one speculative verification pass may draft (`prompt_lookup_num_tokens`) or match
/// (`max_matching_ngram_size`): each drafted position adds a row of logits to the pass.
pub const MAX_DRAFT_TOKENS: usize = 256;
/// Stop strings in one call.
pub const MAX_STOP_STRINGS: usize = 64;
/// Bytes of one stop string.
pub const MAX_STOP_STRING_BYTES: usize = 1024;
/// Buffer sets of the key/value cache an engine keeps (ONNX Runtime's two alternating sets; tract's
/// past and present while a step runs).
pub const CACHE_BUFFER_SETS: u64 = 2;
/// Copies of a row's logits the driver holds at once (the session's output, the row it processes,
/// and, in beam search, the processed scores and the candidates over every beam).
pub const LOGIT_COPIES: u64 = 4;

/// What one call will hold, in the units the limits are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Rows decoding together.
    pub rows: u64,
    /// Bytes: cache + logits + token rows + prefill attention scores.
    pub bytes: u128,
}

/// The memory of this machine in bytes (Linux `MemTotal`), when it can be read.
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The byte limit that applies here: [`MAX_BYTES`], lowered to the machine's memory.
pub fn byte_limit() -> u64 {
    machine_memory().map_or(MAX_BYTES, |m| m.min(MAX_BYTES))
}

/// Sizes that fix a call's footprint.
pub(crate) struct Shape {
    pub rows: u64,
    /// Rows of the prompt's forward pass (beam methods prefill each prompt once).
    pub prefill_rows: u64,
    pub prompt_len: u64,
    pub max_length: u64,
    pub vocab: u64,
    /// Bytes of cache per row and position, every buffer set included.
    pub cache_bytes_per_position: u64,
    pub n_head: u64,
}

impl Shape {
    /// Bytes the call will hold at its largest; products saturate, so no factor can wrap them.
    pub fn footprint(&self) -> Footprint {
        let (rows, len) = (self.rows, self.max_length);
        let cache = product(&[rows, len, self.cache_bytes_per_position]);
        let logits = product(&[rows, self.vocab, 4, LOGIT_COPIES]);
        // Token ids (u32) and mask (i64) per row and position.
        let tokens = product(&[rows, len, 12]);
        // The prompt's attention scores: [rows, heads, prompt, prompt] f32.
        let attention = product(&[self.prefill_rows, self.n_head, self.prompt_len, self.prompt_len, 4]);
        let bytes = [cache, logits, tokens, attention].into_iter().fold(0u128, u128::saturating_add);
        Footprint { rows: self.rows, bytes }
    }
}

/// The product of `factors`, saturating at `u128::MAX`.
fn product(factors: &[u64]) -> u128 {
    factors.iter().fold(1u128, |acc, &f| acc.saturating_mul(u128::from(f)))
}

fn gib(bytes: u128) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Refuses a call whose rows or bytes pass the limits, naming `field`, the setting that multiplies
/// them (`num_beams`, `num_return_sequences`, `prompt` for the number of prompts, `max_new_tokens`).
pub(crate) fn check(footprint: Footprint, field: &str, limit_bytes: u64) -> Result<(), GenerateError> {
    if footprint.rows > MAX_ROWS as u64 {
        return Err(GenerateError::Config {
            field: field.into(),
            message: format!(
                "this call would decode {} rows together (prompts × beams or returned sequences); at most {MAX_ROWS} can",
                footprint.rows
            ),
        });
    }
    if footprint.bytes > u128::from(limit_bytes) {
        return Err(GenerateError::Config {
            field: field.into(),
            message: format!(
                "this call would hold about {} (key/value cache for {} rows at full length, their logits and tokens), \
                 more than the {} this machine allows (at most 2^40 bytes, and no more than its memory); \
                 ask for fewer rows or fewer tokens",
                gib(footprint.bytes),
                footprint.rows,
                gib(u128::from(limit_bytes))
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2_xl(rows: u64, max_length: u64) -> Shape {
        // 48 layers × key and value × 1600 wide × 4 bytes × 2 buffer sets.
        Shape {
            rows,
            prefill_rows: 1,
            prompt_len: 8,
            max_length,
            vocab: 50257,
            cache_bytes_per_position: 48 * 2 * 1600 * 4 * 2,
            n_head: 25,
        }
    }

    #[test]
    fn the_cache_of_many_beams_is_refused_before_allocation() {
        // 4,096 beams of gpt2-xl at 1,024 positions: 4096 × 1024 × 1.2 MiB ≈ 4.7 TiB.
        let f = gpt2_xl(4096, 1024).footprint();
        let err = check(f, "num_beams", MAX_BYTES).unwrap_err().to_string();
        assert!(err.contains("`num_beams`") && err.contains("GiB"), "{err}");
        // One row fits in 2^40 bytes (1.2 GiB) but not in 1 GiB.
        let one = gpt2_xl(1, 1024).footprint();
        assert!(check(one, "prompt", MAX_BYTES).is_ok());
        assert!(check(one, "prompt", 1 << 30).is_err());
    }

    #[test]
    fn rows_past_the_limit_are_refused_and_products_never_wrap() {
        let f = gpt2_xl(MAX_ROWS as u64 + 1, 2).footprint();
        let err = check(f, "num_return_sequences", u64::MAX).unwrap_err().to_string();
        assert!(err.contains("`num_return_sequences`") && err.contains("65536"), "{err}");
        // Factors at u64::MAX: the products saturate instead of wrapping to something small.
        let huge = Shape {
            rows: u64::MAX,
            prefill_rows: u64::MAX,
            prompt_len: u64::MAX,
            max_length: u64::MAX,
            vocab: u64::MAX,
            cache_bytes_per_position: u64::MAX,
            n_head: 1,
        };
        assert!(check(huge.footprint(), "num_beams", u64::MAX).is_err());
    }

    #[test]
    fn machine_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let m = machine_memory().expect("MemTotal");
            assert!(m > 1 << 26, "{m}");
            assert!(byte_limit() <= m);
        }
    }
}
