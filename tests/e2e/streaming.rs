//! Streaming text is UTF-8-safe: pieces are released only when complete, and
//! together they are exactly the decoded text, also when a character's bytes
//! are split across tokens.

use gpt2c_runtime::TextTokenizer;
use gpt2c_tests::fixture;

#[test]
fn streamed_pieces_are_complete_utf8_and_add_up_to_the_text() {
    let tokenizer = TextTokenizer::from_file(&fixture("tokenizer/tokenizer.json")).unwrap();
    let text = "naïve café — 日本語 😀 done";
    let ids = tokenizer.encode(text).unwrap();
    let mut stream = tokenizer.stream();
    let mut pieces = Vec::new();
    let mut held_back = 0;
    for &id in &ids {
        match stream.push(id) {
            Some(p) => pieces.push(p),
            None => held_back += 1,
        }
    }
    pieces.extend(stream.finish());
    assert!(held_back > 0, "the text must split a character across tokens for this test to mean anything");
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.concat(), text);
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
}
