//! Arbitrary text as `config.json`: it parses into a checked config or fails with an error naming
//! the file; an accepted config holds the invariants the graph builder relies on, and a small one
//! goes through what `gpt2c export --random-init` does with it (weights, graph, ONNX bytes).
#![no_main]

use std::path::Path;
use std::sync::Arc;

use gpt2c_compiler::checkpoint::config::MAX_ELEMENTS;
use gpt2c_compiler::checkpoint::{Checkpoint, Gpt2Config};
use gpt2c_compiler::gpt2::random_init;
use gpt2c_compiler::export::generation_config_from_model_config;
use gpt2c_compiler::gpt2::{self, GraphOptions};
use gpt2c_compiler::onnx::{ModelMeta, encode_inline};
use libfuzzer_sys::fuzz_target;

/// Parameters above which a config is only parsed, not built (keeps executions fast).
const BUILD_MAX_PARAMETERS: u64 = 1 << 14;

fuzz_target!(|data: &[u8]| {
    // `Gpt2Config::load` reads with `read_to_string`, which refuses invalid UTF-8 up front.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (c, json) = match Gpt2Config::parse(Path::new("config.json"), text) {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(e.to_string().starts_with("config.json"), "{e}");
            return;
        }
    };
    assert!(c.n_head > 0 && c.head_dim * c.n_head == c.n_embd && c.n_inner > 0 && c.n_layer > 0);
    assert!(c.eos_token_ids.iter().chain(&c.bos_token_id).chain(&c.pad_token_id).all(|&t| (t as usize) < c.vocab_size));
    let (v, p, e, l, i) =
        (c.vocab_size as u64, c.n_positions as u64, c.n_embd as u64, c.n_layer as u64, c.n_inner as u64);
    for product in [v * e, p * e, 3 * e * e, e * i, c.num_labels as u64 * e, 2 * l * p * e] {
        assert!(product <= MAX_ELEMENTS);
    }
    let _ = c.summary.kind();
    let _ = c.summary.activation();
    let generation = generation_config_from_model_config(&json);
    for kv_cache in gpt2c_compiler::gpt2::KvCache::ALL {
        let _ = gpt2c_compiler::layout::genai_config(&c, &generation, *kv_cache);
    }
    // The in-graph search settings from the same config, as generation_config.json (a refusal names
    // its setting; never a panic).
    for generation_kind in gpt2c_compiler::gpt2::search::Generation::ALL {
        let resolved = gpt2c_compiler::gpt2::search::SearchSettings::resolve(
            *generation_kind,
            &c,
            &json,
            &Default::default(),
        );
        if let Err(e) = resolved {
            assert!(e.to_string().starts_with("--generation"), "{e}");
        }
    }

    let Ok(task) = GraphOptions::default().task_for(&c) else { return };
    let parameters = (v + p + 2 * l + 2) * e + l * (4 * e * e + 2 * e * i) + c.num_labels as u64 * e;
    if parameters > BUILD_MAX_PARAMETERS || l > 4 {
        return;
    }
    let weights = random_init::random_weights(&c, task, 0);
    let ckpt = Checkpoint::from_parts(text, Arc::new(weights)).expect("the text parsed above");
    let graph = match gpt2::build_causal_lm(&ckpt, &GraphOptions::default()) {
        Ok(graph) => graph,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let meta = ModelMeta { doc_string: task.describe().into(), metadata: Vec::new() };
    let bytes = encode_inline(&graph, &meta).expect("encoding to memory does not fail");
    gpt2c_proto::decode_model(&bytes).expect("gpt2c's own output decodes");
});
