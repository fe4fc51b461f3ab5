//! Text ↔ token ids through the `tokenizers` crate, plus what generation
//! needs from the vocabulary: each token's bytes (for stop strings) and a
//! streaming decoder that only emits complete UTF-8.

use std::path::Path;

use tokenizers::Tokenizer;

/// A loaded `tokenizer.json`.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<TextTokenizer, String> {
        Tokenizer::from_file(path).map(|inner| TextTokenizer { inner }).map_err(|e| e.to_string())
    }

    /// Token ids of `text` (no special tokens added, as GPT-2 does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string())
    }

    /// Text of `ids`, special tokens included (as transformers' decode does by default).
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.inner.decode(ids, false).map_err(|e| e.to_string())
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The bytes one token stands for (byte-level BPE decodes single tokens losslessly).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match self.inner.get_decoder() {
            Some(_) => {
                let Some(piece) = self.inner.id_to_token(id) else { return Vec::new() };
                byte_level_bytes(&piece).unwrap_or_else(|| self.decode(&[id]).unwrap_or_default().into_bytes())
            }
            None => self.decode(&[id]).unwrap_or_default().into_bytes(),
        }
    }

    /// A streaming decoder: feed ids one by one, receive text once it is valid UTF-8.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream { tokenizer: self, inner: self.inner.decode_stream(false), ids: Vec::new(), emitted: 0 }
    }
}

/// GPT-2's byte ↔ printable-character table, inverted: the byte a vocabulary character stands for.
fn byte_of(c: char) -> Option<u8> {
    let c = c as u32;
    match c {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(c as u8),
        0x100..=0x143 => {
            // The 68 bytes outside the printable ranges, in order, mapped to 256.. .
            let mut n = 0u32;
            for b in 0u32..256 {
                let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
                if !printable {
                    if n == c - 0x100 {
                        return Some(b as u8);
                    }
                    n += 1;
                }
            }
            None
        }
        _ => None,
    }
}

/// A byte-level token string (`Ġworld`) back to bytes; `None` if it is not byte-level (an added token).
fn byte_level_bytes(piece: &str) -> Option<Vec<u8>> {
    piece.chars().map(byte_of).collect()
}

type Decoding<'a> = tokenizers::DecodeStream<
    'a,
    tokenizers::models::ModelWrapper,
    tokenizers::normalizers::NormalizerWrapper,
    tokenizers::pre_tokenizers::PreTokenizerWrapper,
    tokenizers::processors::PostProcessorWrapper,
    tokenizers::decoders::DecoderWrapper,
>;

/// Incremental, UTF-8-safe detokenization of one sequence (the tokenizers
/// crate's `DecodeStream`: text is released only once it decodes without a
/// trailing replacement character).
pub struct TextStream<'a> {
    tokenizer: &'a TextTokenizer,
    inner: Decoding<'a>,
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream<'_> {
    /// Adds a token; returns the new complete text, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let piece = self.inner.step(id).ok().flatten()?;
        self.emitted += piece.len();
        Some(piece)
    }

    /// Whatever is left at the end (an incomplete character comes out as U+FFFD).
    pub fn finish(&mut self) -> Option<String> {
        let text = self.tokenizer.decode(&self.ids).ok()?;
        let rest = text.get(self.emitted..).map(str::to_string).unwrap_or_default();
        self.emitted = text.len();
        (!rest.is_empty()).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_round_trips() {
        assert_eq!(byte_of('Ġ'), Some(b' '));
        assert_eq!(byte_of('Ċ'), Some(b'\n'));
        assert_eq!(byte_of('a'), Some(b'a'));
        assert_eq!(byte_level_bytes("Ġworld"), Some(b" world".to_vec()));
        assert_eq!(byte_level_bytes("<|endoftext|>").map(|b| b.len()), Some(13));
    }
}
