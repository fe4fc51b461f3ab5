//! `gpt2c generate` end to end: transformers' token ids through the command
//! line, and every bad input the runtime issue lists, each refused with one
//! clear message before any generation (exit code 2).
//!
//! Tests that need ONNX Runtime use ORT_DYLIB_PATH; without it they skip,
//! except under GPT2C_CI=1, where they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn gpt2c(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpt2c")).args(args).output().expect("run gpt2c")
}

/// The tiny-default fixture exported into a temporary folder.
fn exported() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    let ckpt = models().join("tiny-default");
    let o = gpt2c(&["export", ckpt.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (tmp, out.to_str().unwrap().to_string())
}

fn ort_available() -> bool {
    let ok = std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| Path::new(&p).is_file());
    if !ok && std::env::var("GPT2C_CI").is_ok_and(|v| v == "1") {
        panic!("ORT_DYLIB_PATH must point to ONNX Runtime under GPT2C_CI=1");
    }
    if !ok {
        eprintln!("skipping the ONNX Runtime part: ORT_DYLIB_PATH is not set");
    }
    ok
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run: exit 2, one message containing every needle, nothing on stdout.
fn refused(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
    assert!(o.stdout.is_empty(), "printed before failing: {}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn generate_reproduces_transformers_greedy_ids() {
    let (_tmp, dir) = exported();
    let text = std::fs::read_to_string(models().join("generation/tiny-default.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let case = doc["cases"].as_array().unwrap().iter().find(|c| c["name"] == "greedy").unwrap();
    let prompt_len = case["prompts"][0].as_array().unwrap().len();
    let expected: Vec<u64> =
        case["sequences"][0].as_array().unwrap()[prompt_len..].iter().map(|v| v.as_u64().unwrap()).collect();
    let mut backends = vec!["tract"];
    if ort_available() {
        backends.push("ort");
    }
    // Prompt lookup decoding and an assistant model (the export as its own) give greedy search's
    // ids (the session then reads every position).
    let lookup = ["--prompt-lookup-num-tokens", "3"];
    let assisted = ["--assistant-model", dir.as_str(), "--num-assistant-tokens", "4"];
    let runs = backends.iter().flat_map(|&b| [(b, None), (b, Some(&lookup[..])), (b, Some(&assisted[..]))]);
    for (backend, extra) in runs {
        let mut args = vec![
            "generate",
            &dir,
            "--prompt",
            "The quick brown fox",
            "--max-new-tokens",
            "16",
            "--json",
            "--backend",
            backend,
        ];
        args.extend(extra.into_iter().flatten());
        let o = gpt2c(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let got: Vec<u64> =
            out["sequences"][0]["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(got, expected, "{backend} {extra:?}");
        assert!(out["sequences"][0]["text"].as_str().unwrap().starts_with("The quick brown fox"));
    }
    // Plain output streams the prompt and its continuation on one line.
    let o =
        gpt2c(&["generate", &dir, "--prompt", "The quick brown fox", "--max-new-tokens", "5", "--backend", "tract"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("The quick brown fox") && text.ends_with('\n'), "{text}");
    assert!(stderr(&o).contains("new tokens in"), "{}", stderr(&o));
}

#[test]
fn help_lists_transformers_options() {
    let help = String::from_utf8(gpt2c(&["generate", "--help"]).stdout).unwrap();
    for flag in [
        "--max-new-tokens",
        "--num-beams",
        "--early-stopping",
        "--repetition-penalty",
        "--no-repeat-ngram-size",
        "--top-k",
        "--top-p",
        "--min-p",
        "--typical-p",
        "--epsilon-cutoff",
        "--eta-cutoff",
        "--num-beam-groups",
        "--diversity-penalty",
        "--bad-words-ids",
        "--sequence-bias",
        "--stop-strings",
        "--max-time",
        "--exponential-decay-length-penalty",
        "--renormalize-logits",
        "--forced-eos-token-id",
        "--suppress-tokens",
        "--begin-suppress-tokens",
        "--num-return-sequences",
        "--min-new-tokens",
        "--backend",
        "--ep",
        "--ep-strict",
        "--seed",
        "--json",
        "--prompts-file",
        "--threads",
        "Beam search methods print",
    ] {
        assert!(help.contains(flag), "generate --help lacks {flag}");
    }
}

#[test]
fn prompt_longer_than_the_context() {
    let (_tmp, dir) = exported();
    let long = "the quick brown fox ".repeat(40);
    let o = gpt2c(&["generate", &dir, "--prompt", &long, "--backend", "tract"]);
    refused(&o, &["prompt 0 has", "more than the model's context of 64 positions (n_positions)"]);
}

#[test]
fn max_new_tokens_past_the_context_stops_at_the_limit_and_says_so() {
    let (_tmp, dir) = exported();
    let o = gpt2c(&[
        "generate",
        &dir,
        "--prompt",
        "The quick brown fox",
        "--max-new-tokens",
        "200",
        "--suppress-tokens",
        "999",
        "--json",
        "--backend",
        "tract",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("generation stops at 64 tokens in all, the model's context (n_positions)"), "{err}");
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let seq = &out["sequences"][0];
    assert_eq!(seq["finish_reason"], "length");
    let text = std::fs::read_to_string(models().join("generation/tiny-default.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prompt_len = doc["cases"][0]["prompts"][0].as_array().unwrap().len(); // "The quick brown fox"
    assert_eq!(seq["token_ids"].as_array().unwrap().len(), 64 - prompt_len);
}

#[test]
fn invalid_sampling_and_beam_settings() {
    let (_tmp, dir) = exported();
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--top-p", "0"], &["`top_p`", "(0, 1]"]),
        (&["--top-p", "1.5"], &["`top_p`", "(0, 1]"]),
        (&["--do-sample", "--temperature", "0"], &["`temperature`", "strictly positive"]),
        (&["--do-sample", "--temperature", "-1"], &["`temperature`"]),
        (
            &["--num-beams", "2", "--num-return-sequences", "3"],
            &["`num_return_sequences`", "cannot exceed num_beams (2)"],
        ),
        (
            &["--num-beams", "3", "--num-beam-groups", "2", "--diversity-penalty", "1"],
            &["`num_beam_groups`", "num_beams (3) must be divisible by num_beam_groups (2)"],
        ),
    ];
    for (flags, needles) in cases {
        let mut args = vec!["generate", dir.as_str(), "--prompt", "Hello"];
        args.extend_from_slice(flags);
        refused(&gpt2c(&args), needles);
    }
    refused(&gpt2c(&["generate", &dir, "--prompt", "Hi", "--bad-words-ids", "[[1,"]), &["--bad-words-ids", "JSON"]);
    refused(&gpt2c(&["generate", &dir]), &["no prompt"]);
}

#[test]
fn export_folder_without_a_tokenizer() {
    let (_tmp, dir) = exported();
    std::fs::remove_file(Path::new(&dir).join("tokenizer.json")).unwrap();
    refused(&gpt2c(&["generate", &dir, "--prompt", "Hello", "--backend", "tract"]), &["no tokenizer (tokenizer.json)"]);
    refused(&gpt2c(&["generate", "/nonexistent/folder", "--prompt", "Hello"]), &["not an export folder"]);
}

#[test]
fn onnx_runtime_absent() {
    let (_tmp, dir) = exported();
    let run = |backend: &str| {
        Command::new(env!("CARGO_BIN_EXE_gpt2c"))
            .args(["generate", &dir, "--prompt", "Hello", "--max-new-tokens", "3", "--backend", backend])
            .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
            .env("PATH", "/nonexistent")
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap()
    };
    refused(
        &run("ort"),
        &[
            "ONNX Runtime's library was not found",
            "ORT_DYLIB_PATH",
            "onnxruntime` Python package",
            "system library path",
            "--backend tract",
        ],
    );
    // auto falls back to tract and says so.
    let o = run("auto");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("using tract"), "{}", stderr(&o));
}

#[test]
fn execution_providers_fall_back_softly_or_fail_when_strict() {
    if !ort_available() {
        return;
    }
    let (_tmp, dir) = exported();
    let base = ["generate", dir.as_str(), "--prompt", "Hello", "--max-new-tokens", "3", "--backend", "ort"];
    let soft = gpt2c(&[&base[..], &["--ep", "cuda,cpu"]].concat());
    assert!(soft.status.success(), "{}", stderr(&soft));
    assert!(stderr(&soft).contains("execution provider `cuda` is unavailable"), "{}", stderr(&soft));
    let strict = gpt2c(&[&base[..], &["--ep", "cuda", "--ep-strict"]].concat());
    refused(&strict, &["execution provider `cuda`"]);
    refused(&gpt2c(&[&base[..], &["--ep", "warp-drive"]].concat()), &["execution provider `warp-drive`: unknown"]);
}

/// A run that must succeed: exit 0, no panic text.
fn succeeded(o: &Output) {
    let err = stderr(o);
    assert!(o.status.success(), "exit {:?}; stderr: {err}", o.status.code());
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
}

/// Settings that once panicked or hung, now run: beam sampling whose filters leave fewer
/// candidates than beams, and a time budget past what the clock can hold.
#[test]
fn beam_sampling_with_few_candidates_and_huge_durations_run() {
    let (_tmp, dir) = exported();
    for flags in [
        &["--do-sample", "--num-beams", "4", "--top-k", "2", "--seed", "1", "--json"][..],
        &["--do-sample", "--num-beams", "64", "--seed", "2", "--json"],
        &["--do-sample", "--num-beams", "4", "--top-k", "1", "--num-return-sequences", "4", "--json"],
        &["--max-time", "1e300", "--json"],
    ] {
        let mut args = vec!["generate", dir.as_str(), "--prompt", "Hi", "--max-new-tokens", "5", "--backend", "tract"];
        args.extend_from_slice(flags);
        let o = gpt2c(&args);
        succeeded(&o);
        let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let sequences = out["sequences"].as_array().unwrap();
        assert!(!sequences.is_empty() && sequences.len() <= 4, "{flags:?}: {} sequences", sequences.len());
        for s in sequences {
            let n = s["token_ids"].as_array().unwrap().len();
            assert!((1..=5).contains(&n), "{flags:?}: {n} new tokens");
            assert!(s["score"].is_null() || s["score"].as_f64().unwrap().is_finite(), "{flags:?}: {s}");
        }
    }
}

/// Every setting out of range is one message naming it, exit 2, nothing on stdout, from the
/// command line and from generation_config.json alike.
#[test]
fn out_of_range_settings_name_the_setting() {
    let (_tmp, dir) = exported();
    let cases: [(&[&str], &str); 13] = [
        (&["--do-sample", "--num-return-sequences", "3000000000"], "`num_return_sequences`"),
        (&["--num-beams", "3000000000"], "`num_beams`"),
        (&["--num-beams", "70000"], "`num_beams`"),
        (&["--max-new-tokens", "18446744073709551615"], "`max_new_tokens`"),
        (&["--temperature", "nan"], "`temperature`"),
        (&["--do-sample", "--temperature", "inf"], "`temperature`"),
        (&["--max-time", "nan"], "`max_time`"),
        (&["--max-time", "inf"], "`max_time`"),
        (&["--repetition-penalty", "nan"], "`repetition_penalty`"),
        (&["--threads", "100000"], "`threads`"),
        (&["--prompt-lookup-num-tokens", "0"], "`prompt_lookup_num_tokens`"),
        (&["--prompt-lookup-num-tokens", "4", "--do-sample"], "`prompt_lookup_num_tokens`"),
        (&["--prompt-lookup-num-tokens", "4", "--prompt", "Two prompts"], "`prompt_lookup_num_tokens`"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["generate", dir.as_str(), "--prompt", "Hello", "--backend", "tract"];
        args.extend_from_slice(flags);
        refused(&gpt2c(&args), &[needle]);
    }
    // An assistant drafts for greedy search only; a missing one names its flag.
    let assisted = ["generate", dir.as_str(), "--prompt", "Hello", "--backend", "tract", "--assistant-model"];
    refused(&gpt2c(&[&assisted[..], &[dir.as_str(), "--do-sample"]].concat()), &["`assistant_model`"]);
    refused(&gpt2c(&[&assisted[..], &["/nonexistent/assistant"]].concat()), &["--assistant-model"]);
    for (file, needle) in [
        (r#"{"num_beams": 3000000000}"#, "`num_beams`"),
        (r#"{"max_time": 1e300, "min_new_tokens": 18446744073709551615}"#, "`min_new_tokens`"),
        (r#"{"top_p": -0.5}"#, "`top_p`"),
    ] {
        std::fs::write(Path::new(&dir).join("generation_config.json"), file).unwrap();
        refused(&gpt2c(&["generate", &dir, "--prompt", "Hello", "--backend", "tract"]), &[needle]);
    }
    // A huge time budget from the file saturates instead of overflowing.
    std::fs::write(Path::new(&dir).join("generation_config.json"), r#"{"max_time": 1e300}"#).unwrap();
    succeeded(&gpt2c(&["generate", &dir, "--prompt", "Hello", "--max-new-tokens", "3", "--backend", "tract"]));
    // The thread bound applies to every command that runs a model.
    refused(&gpt2c(&["bench", &dir, "--backend", "tract", "--threads", "100000"]), &["`threads`"]);
    refused(&gpt2c(&["generate", &dir, "--prompt", "Hi", "--threads", "0"]), &["`threads`", "at least 1"]);
}

/// Every token suppressed is a message naming the setting, not a panic or token 0.
#[test]
fn every_token_suppressed_names_the_setting() {
    let (_tmp, dir) = exported();
    let all: Vec<String> = (0..1000).map(|t| t.to_string()).collect();
    let all = all.join(",");
    for mode in [&[][..], &["--do-sample", "--seed", "1"], &["--num-beams", "3"]] {
        let mut args =
            vec!["generate", dir.as_str(), "--prompt", "Hello", "--backend", "tract", "--suppress-tokens", &all];
        args.extend_from_slice(mode);
        refused(&gpt2c(&args), &["`suppress_tokens`", "no token to choose"]);
    }
}

/// `gpt2c bench --num-beams` reports per-step latencies, never NaN.
#[test]
fn bench_with_beams_reports_numbers() {
    let (_tmp, dir) = exported();
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", dir.as_str(), "--backend", "tract", "--num-beams", "2", "--prompt-tokens", "8"];
        args.extend_from_slice(&["--repeat", "1", "--warmup", "0"]);
        args.extend_from_slice(extra);
        gpt2c(&args)
    };
    let o = bench(&["--new-tokens", "4", "--json"]);
    succeeded(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.contains("NaN") && !text.contains("null"), "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in ["prefill_ms", "decode_tok_s", "token_ms_p50", "token_ms_p90", "token_ms_p99"] {
        assert!(report[key].as_f64().is_some_and(|v| v.is_finite() && v > 0.0), "{key}: {report}");
    }
    let o = bench(&["--new-tokens", "3"]);
    succeeded(&o);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("NaN"));
}

/// A model file that holds no graph (empty, or bytes that decode as an empty ModelProto) is refused.
#[test]
fn inspect_refuses_a_file_without_a_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    refused(&gpt2c(&["inspect", empty.to_str().unwrap()]), &["empty.onnx", "hold no graph"]);
    // A valid protobuf of another message: field 1 as a varint (ir_version 7), no graph.
    let other = tmp.path().join("other.onnx");
    std::fs::write(&other, [0x08, 0x07]).unwrap();
    refused(&gpt2c(&["inspect", other.to_str().unwrap(), "--json"]), &["hold no graph"]);
}

/// Every command that prints ends as a success when its reader has gone (`| head -1`): the pipe
/// is closed before the command starts, so every write fails.
#[test]
fn a_closed_stdout_is_success_for_every_command() {
    let (tmp, dir) = exported();
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog ".repeat(20)).unwrap();
    let out2 = tmp.path().join("again");
    let ckpt = models().join("tiny-default");
    let commands: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["export", ckpt.to_str().unwrap(), "-o", out2.to_str().unwrap()],
        vec!["inspect", &dir],
        vec!["inspect", &dir, "--json"],
        vec!["verify", &dir, "--backends", "tract"],
        vec!["verify", &dir, "--backends", "tract", "--json"],
        vec!["generate", &dir, "--prompt", "Hello", "--max-new-tokens", "3", "--backend", "tract"],
        vec!["generate", &dir, "--prompt", "Hello", "--max-new-tokens", "3", "--backend", "tract", "--json"],
        vec!["generate", &dir, "--prompt", "A", "--prompt", "B", "--max-new-tokens", "2", "--backend", "tract"],
        vec!["bench", &dir, "--backend", "tract", "--prompt-tokens", "4", "--new-tokens", "2", "--repeat", "1"],
        vec!["perplexity", &dir, "--text", text.to_str().unwrap(), "--backend", "tract", "--max-length", "32"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(env!("CARGO_BIN_EXE_gpt2c"))
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(o.status.success(), "{args:?}: exit {:?}; stderr: {err}", o.status.code());
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// tiny-default exported with `--generation` (and extra export options).
fn exported_search(generation: &str, extra: &[&str]) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    let ckpt = models().join("tiny-default");
    let args =
        [&["export", ckpt.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q", "--generation", generation][..], extra];
    let o = gpt2c(&args.concat());
    assert!(o.status.success(), "{}", stderr(&o));
    (tmp, out.to_str().unwrap().to_string())
}

fn token_ids(o: &Output) -> Vec<serde_json::Value> {
    succeeded(o);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    doc["sequences"].as_array().unwrap().iter().map(|s| s["token_ids"].clone()).collect()
}

/// `gpt2c generate` runs an export whose graph searches: one call of its GreedySearch or
/// BeamSearch node gives the ids gpt2c's own driver gives on the plain export; what the node cannot
/// do (another search, settings it fixed or lacks, tract, perplexity) is one message naming it.
#[test]
fn generate_runs_an_in_graph_search_export() {
    if !ort_available() {
        return;
    }
    let (_plain_tmp, plain) = exported();
    let (_greedy_tmp, greedy) = exported_search("greedy-search", &[]);
    let (_beam_tmp, beam) = exported_search("beam-search", &[]);
    let prompts = ["-p", "hello world", "-p", "a b"];
    let run = |dir: &str, extra: &[&str]| {
        gpt2c(
            &[&["generate", dir, "--backend", "ort", "--json", "-q", "--max-new-tokens", "8"][..], &prompts, extra]
                .concat(),
        )
    };
    let want = token_ids(&run(&plain, &[]));
    assert_eq!(want.len(), 2);
    assert_eq!(token_ids(&run(&greedy, &[])), want, "GreedySearch in the graph, a padded batch of two");
    let beams = ["--num-beams", "3", "--num-return-sequences", "2"];
    let want = token_ids(&run(&plain, &beams));
    assert_eq!(want.len(), 4);
    assert_eq!(token_ids(&run(&beam, &beams)), want, "BeamSearch in the graph");
    refused(&run(&greedy, &["--do-sample"]), &["do_sample", "GreedySearch"]);
    refused(&run(&greedy, &["--typical-p", "0.5"]), &["typical_p", "GreedySearch"]);
    refused(&run(&greedy, &["--no-repeat-ngram-size", "2"]), &["no_repeat_ngram_size", "fixed"]);
    refused(&run(&beam, &["--num-beams", "2", "--early-stopping", "never"]), &["early_stopping", "never"]);
    let tract = gpt2c(&["generate", &greedy, "--backend", "tract", "-p", "hello"]);
    refused(&tract, &["tract", "GreedySearch"]);
    let text = models().join("heldout/tiny-trained-heldout.txt");
    let ppl = gpt2c(&["perplexity", &greedy, "--backend", "ort", "--text", text.to_str().unwrap()]);
    refused(&ppl, &["GreedySearch", "plain export"]);
}

/// An fp16 export on ONNX Runtime's CPU provider (x86) says it runs in fp32 and what reads fewer
/// bytes; an fp32 export says nothing of the kind.
#[test]
fn an_fp16_export_on_the_cpu_provider_says_it_computes_in_fp32() {
    if !ort_available() || cfg!(target_arch = "aarch64") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = models().join("tiny-default");
    let fp16 = tmp.path().join("fp16");
    let o = gpt2c(&["export", ckpt.to_str().unwrap(), "-o", fp16.to_str().unwrap(), "-q", "--dtype", "fp16"]);
    succeeded(&o);
    let (_t, fp32) = exported();
    let needle = "runs in fp32 on ONNX Runtime's CPU provider";
    for (dir, warned) in [(fp16.to_str().unwrap(), true), (fp32.as_str(), false)] {
        let o = gpt2c(&["generate", dir, "--prompt", "Hello", "--max-new-tokens", "2", "--backend", "ort"]);
        succeeded(&o);
        assert_eq!(stderr(&o).contains(needle), warned, "{dir}: {}", stderr(&o));
    }
}
