//! Arbitrary generation settings × arbitrary logits through the real driver: the settings JSON
//! (what `generation_config.json`, `gpt2c generate`'s options and the server's requests become)
//! and a stand-in session playing back logits a broken export could return (NaN, ±inf, ties,
//! rows all equal). The invariant is `gpt2c_runtime::playback::generation_invariant`: refused
//! with an error naming a field, or generated within the length bound; never a panic or a hang.
//!
//! Input: `[vocab, n_positions, prompts, token bytes...]`, then the settings text up to the first
//! 0 byte, then the logits as byte pairs `[tag, value]`: tag 0 NaN, 1 +inf, 2 -inf, 3 f32::MAX,
//! 4 a tie (1.0), otherwise `value as i8 / 8`.
#![no_main]

use gpt2c_runtime::playback::generation_invariant;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [vocab, positions, prompt_byte, rest @ ..] = data else { return };
    let vocab = usize::from(*vocab % 64) + 1;
    let n_positions = usize::from(*positions % 48) + 1;
    // Up to three prompts of up to seven tokens, ids up to vocab + 1 (so some are out of range).
    let count = usize::from(prompt_byte % 3) + 1;
    let mut prompts = Vec::with_capacity(count);
    let mut bytes = rest.iter();
    for _ in 0..count {
        let len = bytes.next().map_or(1, |b| usize::from(b % 8));
        let prompt: Vec<u32> = bytes.by_ref().take(len).map(|&b| u32::from(b) % (vocab as u32 + 2)).collect();
        prompts.push(prompt);
    }
    let rest = bytes.as_slice();
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let settings = String::from_utf8_lossy(&rest[..split]);
    let values: Vec<f32> = rest[split..]
        .chunks_exact(2)
        .map(|c| match c[0] {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => f32::MAX,
            4 => 1.0,
            _ => f32::from(c[1] as i8) / 8.0,
        })
        .collect();
    if let Err(violation) = generation_invariant(&settings, vocab, n_positions, &prompts, values) {
        panic!("{violation}\nsettings: {settings}\nvocab {vocab}, n_positions {n_positions}, prompts {prompts:?}");
    }
});
