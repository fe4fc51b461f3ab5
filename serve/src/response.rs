//! Every shape a completion answers in, built here only: the whole JSON response, a streamed
//! chunk, the usage chunk, an error event, and the text a client sees of a choice's tokens.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::Event as SseEvent;
use gpt2c_runtime::TextTokenizer;
use gpt2c_runtime::generate::FinishReason;
use gpt2c_runtime::tokenizer::TextStream;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::infer::Choice;
use crate::validation::Completion;

/// OpenAI's object name of a completion and of each of its chunks.
const OBJECT: &str = "text_completion";

/// The text a client sees of `tokens`: trailing EOS tokens dropped, cut before the first stop
/// string (as OpenAI does); whether a stop string cut it.
pub fn visible_text(tokenizer: &TextTokenizer, tokens: &[u32], eos: &[u32], stop: &[String]) -> (String, bool) {
    let mut end = tokens.len();
    while end > 0 && eos.contains(&tokens[end - 1]) {
        end -= 1;
    }
    let mut text = tokenizer.decode(&tokens[..end]).unwrap_or_default();
    let cut = stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min();
    if let Some(at) = cut {
        text.truncate(at);
    }
    (text, cut.is_some())
}

/// OpenAI's finish reason.
pub fn finish_reason(f: FinishReason, cut: bool) -> &'static str {
    match f {
        _ if cut => "stop",
        FinishReason::Eos | FinishReason::StopString => "stop",
        FinishReason::Length | FinishReason::Time => "length",
    }
}

/// Incremental text of one streamed choice, linear in its length: each token is decoded once
/// (tokenizers' `DecodeStream`), stop strings are looked for only where a new one could end,
/// and only text that can no longer change is sent (no incomplete UTF-8, nothing a stop string
/// could still claim, no EOS token that may turn out to be trailing).
pub struct StreamedText<'t> {
    decoder: TextStream<'t>,
    /// EOS tokens not yet decoded: text only if a token follows them.
    held_eos: Vec<u32>,
    text: String,
    sent: usize,
    stopped: bool,
    /// Tokens seen, for the final text.
    pub tokens: Vec<u32>,
}

impl<'t> StreamedText<'t> {
    pub fn new(tokenizer: &'t TextTokenizer) -> StreamedText<'t> {
        StreamedText {
            decoder: tokenizer.stream(),
            held_eos: Vec::new(),
            text: String::new(),
            sent: 0,
            stopped: false,
            tokens: Vec::new(),
        }
    }

    /// The new text after `token`, if any.
    pub fn push(&mut self, token: u32, eos: &[u32], stop: &[String]) -> Option<String> {
        self.tokens.push(token);
        if self.stopped {
            return None;
        }
        if eos.contains(&token) {
            self.held_eos.push(token);
            return None;
        }
        let before = self.text.len();
        for t in std::mem::take(&mut self.held_eos).into_iter().chain([token]) {
            if let Some(piece) = self.decoder.push(t) {
                self.text.push_str(&piece);
            }
        }
        let longest = stop.iter().map(String::len).max().unwrap_or(0);
        // A stop string first seen now ends in the new text: it starts at most `longest` bytes back.
        let mut from = before.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let cut = stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|at| from + at))
            .min();
        let ready = match cut {
            Some(at) => {
                self.stopped = true;
                self.text.truncate(at);
                at
            }
            None => {
                // Hold back a tail that may be the start of a stop string.
                let hold = stop
                    .iter()
                    .flat_map(|s| (1..s.len()).filter(|&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
                    .filter(|p| self.text.ends_with(p))
                    .map(str::len)
                    .max()
                    .unwrap_or(0);
                self.text.len() - hold
            }
        };
        self.take(ready)
    }

    /// What is left once the choice has finished, given its whole visible text.
    pub fn finish(&mut self, final_text: &str) -> Option<String> {
        if !self.text.is_char_boundary(self.sent) || !final_text.starts_with(&self.text[..self.sent]) {
            return None;
        }
        self.text = final_text.to_string();
        self.take(self.text.len())
    }

    fn take(&mut self, end: usize) -> Option<String> {
        if end <= self.sent || !self.text.is_char_boundary(end) || !self.text.is_char_boundary(self.sent) {
            return None;
        }
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        Some(piece)
    }
}

/// The logprobs object of a choice: tokens, their log-probabilities, the top alternatives and
/// each token's character offset, for the tokens inside the returned text.
fn logprobs_json(tokenizer: &TextTokenizer, choice: &Choice, text_len: usize) -> Value {
    let piece = |t: u32| tokenizer.decode(&[t]).unwrap_or_default();
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut at = 0;
    for (t, lp) in choice.tokens.iter().zip(&choice.logprobs) {
        if at >= text_len && !tokens.is_empty() {
            break;
        }
        let p = piece(*t);
        offsets.push(at);
        at += p.chars().count();
        tokens.push(p);
        lps.push(lp.logprob);
        let top: serde_json::Map<String, Value> = lp.top.iter().map(|&(id, v)| (piece(id), json!(v))).collect();
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// A completion's id and creation time, shared by all its chunks.
#[derive(Clone, Debug)]
pub struct Stamp {
    pub id: String,
    pub created: u64,
}

impl Stamp {
    pub fn now() -> Stamp {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Stamp { id: format!("cmpl-{:x}{:08x}", now.as_nanos(), std::process::id()), created: now.as_secs() }
    }
}

/// `usage`.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens})
}

fn envelope(stamp: &Stamp, model: &str, choices: Value) -> Value {
    json!({"id": stamp.id, "object": OBJECT, "created": stamp.created, "model": model, "choices": choices})
}

/// The whole response of a non-streamed request, from every prompt's choices.
pub fn completion(tokenizer: &TextTokenizer, model: &str, c: &Completion, mut choices: Vec<Choice>) -> Value {
    choices.sort_by_key(|ch| ch.index);
    let eos = c.config.eos();
    let completion_tokens: usize = choices.iter().map(|ch| ch.tokens.len()).sum();
    let out: Vec<Value> = choices
        .iter()
        .map(|ch| {
            let (text, cut) = visible_text(tokenizer, &ch.tokens, &eos, &c.stop);
            let prompt_text = if c.echo { prompt_text(tokenizer, c, ch.index) } else { String::new() };
            let logprobs = c.logprobs.map(|_| logprobs_json(tokenizer, ch, text.chars().count()));
            json!({"index": ch.index, "text": format!("{prompt_text}{text}"), "logprobs": logprobs,
                   "finish_reason": finish_reason(ch.finish, cut)})
        })
        .collect();
    let mut body = envelope(&Stamp::now(), model, Value::Array(out));
    body["usage"] = usage(c.prompt_tokens(), completion_tokens);
    body
}

/// The prompt's text, for `echo`.
pub fn prompt_text(tokenizer: &TextTokenizer, c: &Completion, choice: usize) -> String {
    c.prompts.get(choice / c.n.max(1)).and_then(|p| tokenizer.decode(&p.ids).ok()).unwrap_or_default()
}

/// One streamed piece of one choice.
pub fn chunk(stamp: &Stamp, model: &str, index: usize, text: &str, finish: Option<&str>) -> SseEvent {
    let choice = json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish});
    SseEvent::default().data(envelope(stamp, model, json!([choice])).to_string())
}

/// The usage chunk `stream_options.include_usage` asks for: no choices, the request's usage.
pub fn usage_chunk(stamp: &Stamp, model: &str, prompt_tokens: usize, completion_tokens: usize) -> SseEvent {
    let mut body = envelope(stamp, model, json!([]));
    body["usage"] = usage(prompt_tokens, completion_tokens);
    SseEvent::default().data(body.to_string())
}

/// An error inside a stream (OpenAI's error object as the event's data).
pub fn error_event(e: &ApiError) -> SseEvent {
    SseEvent::default().data(e.body().to_string())
}

/// The end of every stream.
pub fn done_event() -> SseEvent {
    SseEvent::default().data("[DONE]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TextTokenizer {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tokenizer/tokenizer.json");
        TextTokenizer::from_file(&path).unwrap()
    }

    /// Streams `ids` one by one; returns the pieces and the final text.
    fn stream_ids(t: &TextTokenizer, ids: &[u32], stop: &[&str]) -> (Vec<String>, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut s = StreamedText::new(t);
        let mut pieces: Vec<String> = ids.iter().filter_map(|&id| s.push(id, &[50256], &stop)).collect();
        let (final_text, cut) = visible_text(t, ids, &[50256], &stop);
        pieces.extend(s.finish(&final_text));
        (pieces, final_text, cut)
    }

    #[test]
    fn streamed_pieces_add_up_to_the_final_text() {
        let t = tokenizer();
        for (text, stop, want, cut) in [
            ("Hello, my name is Anna.", vec![], "Hello, my name is Anna.", false),
            // Multi-byte characters split across byte-level tokens are held until complete.
            ("naïve café — 日本語 ok", vec![], "naïve café — 日本語 ok", false),
            // A stop string spanning tokens is cut, and nothing after it is ever sent.
            ("one two three four", vec!["o thr"], "one tw", true),
            ("one two three four", vec!["four", " two"], "one", true),
            ("a stop that never comes", vec!["xyz"], "a stop that never comes", false),
            // A stop string made of multi-byte characters, ending in the last token.
            ("ok 日本語", vec!["本語"], "ok 日", true),
        ] {
            let ids = t.encode(text).unwrap();
            let (pieces, final_text, was_cut) = stream_ids(&t, &ids, &stop);
            assert_eq!(final_text, want, "{text:?} {stop:?}");
            assert_eq!(was_cut, cut);
            assert_eq!(pieces.concat(), final_text, "{text:?}: {pieces:?}");
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        }
    }

    #[test]
    fn an_eos_token_is_text_only_when_a_token_follows_it() {
        let t = tokenizer();
        let mut ids = t.encode("The end").unwrap();
        ids.push(50256);
        let (pieces, final_text, _) = stream_ids(&t, &ids, &[]);
        assert_eq!(final_text, "The end");
        assert_eq!(pieces.concat(), "The end", "a trailing EOS is never sent");
        ids.extend(t.encode(" more").unwrap());
        let (pieces, final_text, _) = stream_ids(&t, &ids, &[]);
        // Whatever the tokenizer makes of an EOS inside the text, the stream says the same.
        assert_eq!(final_text, t.decode(&ids).unwrap());
        assert!(final_text.ends_with(" more"), "{final_text:?}");
        assert_eq!(pieces.concat(), final_text);
    }

    #[test]
    fn trailing_eos_is_not_text_and_finish_reasons_follow_openai() {
        let t = tokenizer();
        let mut ids = t.encode("The end").unwrap();
        ids.push(50256);
        assert_eq!(visible_text(&t, &ids, &[50256], &[]).0, "The end");
        assert_eq!(finish_reason(FinishReason::Eos, false), "stop");
        assert_eq!(finish_reason(FinishReason::Length, true), "stop");
        assert_eq!(finish_reason(FinishReason::Time, false), "length");
    }
}
