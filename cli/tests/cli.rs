//! The `gpt2c` binary end to end: help text, a successful export, and bad
//! input, where each case must end in one clear message naming the file or
//! field, exit code 2, and nothing left where the output would have gone.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gpt2c(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpt2c")).args(args).output().expect("run gpt2c")
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-default")
}

/// A writable copy of the tiny-default fixture.
fn copy_fixture(dir: &Path) -> PathBuf {
    let dest = dir.join("ckpt");
    fs::create_dir_all(&dest).unwrap();
    for entry in fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
    dest
}

/// Rewrites model.safetensors through `edit(name, shape, bytes)`, which returns the tensor to keep.
fn rewrite_weights(ckpt: &Path, edit: impl Fn(&str, Vec<usize>, Vec<u8>) -> Option<(Vec<usize>, Vec<u8>)>) {
    let path = ckpt.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            edit(&name, view.shape().to_vec(), view.data().to_vec()).map(|(shape, data)| (name, shape, data))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = kept
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn edit_config(ckpt: &Path, key: &str, value: serde_json::Value) {
    let path = ckpt.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    config[key] = value;
    fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// Runs an export expected to fail; checks exit code, the message and that nothing was left behind.
fn expect_failure(tmp: &Path, model: &Path, out: &Path, needles: &[&str]) -> String {
    let before: Vec<_> = fs::read_dir(tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    let output = gpt2c(&["export", model.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "exit code; stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one message, got: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let after: Vec<_> = fs::read_dir(tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "the failed export left files behind");
    stderr
}

#[test]
fn help_explains_every_option() {
    let top = String::from_utf8(gpt2c(&["--help"]).stdout).unwrap();
    assert!(top.contains("export") && top.contains("Compile a Hugging Face GPT-2 checkpoint"), "{top}");
    let help = String::from_utf8(gpt2c(&["export", "--help"]).stdout).unwrap();
    for option in ["--output", "--opset", "--external-data", "--force", "--quiet", "model.onnx_data", "present."] {
        assert!(help.contains(option), "export --help lacks {option}:\n{help}");
    }
}

#[test]
fn export_prints_a_summary_and_writes_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = gpt2c(&["export", fixture().to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("exported 59.5k parameters (2 layers, text-generation-with-past)"), "{stdout}");
    for file in ["model.onnx", "config.json", "generation_config.json", "tokenizer.json", "vocab.json", "merges.txt"] {
        assert!(out.join(file).is_file(), "{file} missing from the export");
    }
    // The config is copied byte for byte.
    assert_eq!(fs::read(out.join("config.json")).unwrap(), fs::read(fixture().join("config.json")).unwrap());

    // A second export into the same non-empty folder needs --force, which replaces it.
    let again = gpt2c(&["export", fixture().to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("pass --force"));
    fs::write(out.join("stale.txt"), "old").unwrap();
    let forced = gpt2c(&["export", fixture().to_str().unwrap(), "-o", out.to_str().unwrap(), "--force", "-q"]);
    assert!(forced.status.success());
    assert!(!out.join("stale.txt").exists() && out.join("model.onnx").is_file());
    assert!(forced.stdout.is_empty(), "--quiet prints nothing");
}

#[test]
fn missing_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture(tmp.path());
    fs::remove_file(ckpt.join("config.json")).unwrap();
    expect_failure(tmp.path(), &ckpt, &tmp.path().join("out"), &["config.json", "missing"]);
}

#[test]
fn tensor_missing_from_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture(tmp.path());
    rewrite_weights(&ckpt, |name, shape, data| (name != "transformer.h.1.mlp.c_fc.bias").then_some((shape, data)));
    expect_failure(
        tmp.path(),
        &ckpt,
        &tmp.path().join("out"),
        &["tensor `transformer.h.1.mlp.c_fc.bias` is missing", "model.safetensors"],
    );
}

#[test]
fn tensor_with_wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture(tmp.path());
    rewrite_weights(&ckpt, |name, shape, data| {
        Some(if name == "transformer.wpe.weight" { (vec![shape[1], shape[0]], data) } else { (shape, data) })
    });
    expect_failure(
        tmp.path(),
        &ckpt,
        &tmp.path().join("out"),
        &["tensor `transformer.wpe.weight`", "has shape [32, 64], expected [64, 32]"],
    );
}

#[test]
fn truncated_safetensors_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture(tmp.path());
    let path = ckpt.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    expect_failure(tmp.path(), &ckpt, &tmp.path().join("out"), &["model.safetensors", "truncated"]);
    // Cut inside the header too.
    fs::write(&path, &bytes[..100]).unwrap();
    expect_failure(tmp.path(), &ckpt, &tmp.path().join("out"), &["model.safetensors", "truncated"]);
}

#[test]
fn header_offsets_past_the_end_of_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture(tmp.path());
    let path = ckpt.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data_len = (bytes.len() - 8 - n) as u64;
    // A header that lies: wte claims to run past the end of the data, with a matching shape.
    let wte = &mut header["transformer.wte.weight"];
    let begin = wte["data_offsets"][0].as_u64().unwrap();
    let count = (data_len - begin) / 4 + 64;
    wte["shape"] = serde_json::json!([count / 32, 32]);
    wte["data_offsets"] = serde_json::json!([begin, begin + (count / 32) * 32 * 4]);
    let text = serde_json::to_string(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    fs::write(&path, out).unwrap();
    expect_failure(
        tmp.path(),
        &ckpt,
        &tmp.path().join("out"),
        &["model.safetensors", "tensor `transformer.wte.weight`", "point past the end"],
    );
}

#[test]
fn n_embd_not_divisible_by_n_head() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture(tmp.path());
    edit_config(&ckpt, "n_head", serde_json::json!(5));
    expect_failure(
        tmp.path(),
        &ckpt,
        &tmp.path().join("out"),
        &["config.json", "field `n_embd`", "divisible by n_head (5)"],
    );
}

#[test]
fn unknown_activation_function() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture(tmp.path());
    edit_config(&ckpt, "activation_function", serde_json::json!("gelu_newest"));
    expect_failure(
        tmp.path(),
        &ckpt,
        &tmp.path().join("out"),
        &["config.json", "field `activation_function`", "unknown activation \"gelu_newest\"", "gelu_new"],
    );
}

#[test]
fn output_path_is_an_existing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("taken");
    fs::write(&out, "keep me").unwrap();
    expect_failure(tmp.path(), &fixture(), &out, &["taken", "exists and is a file"]);
    assert_eq!(fs::read_to_string(&out).unwrap(), "keep me");
}

#[test]
fn invalid_opset_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = gpt2c(&["export", fixture().to_str().unwrap(), "-o", out.to_str().unwrap(), "--opset", "9"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--opset 9: not supported; choose one from 14 to 23"));
    assert!(!out.exists());
}

/// `--kv-cache shared` needs the ORT target with fp32 compute and a task with a cache: each bad
/// combination is one message before anything is written.
#[test]
fn kv_cache_shared_is_refused_where_it_cannot_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixture();
    let base = ["export", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--kv-cache", "shared"];
    for (extra, needle) in [
        (&[][..], "--kv-cache shared needs --target ort"),
        (&["--target", "ort", "--dtype", "fp16"][..], "--kv-cache shared needs --target ort with fp32 compute"),
        (&["--target", "ort", "--task", "text-classification"][..], "not text-classification"),
        (&["--target", "ort", "--task", "text-generation"][..], "needs a task with past key/values"),
    ] {
        let output = gpt2c(&[&base[..], extra].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle) && stderr.trim_end().lines().count() == 1, "{extra:?}: {stderr}");
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }
    let output = gpt2c(&[&base[..], &["--target", "ort", "-q"][..]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let help = String::from_utf8(gpt2c(&["export", "--help"]).stdout).unwrap();
    assert!(help.contains("--kv-cache") && help.contains("GroupQueryAttention"), "{help}");
}

/// `--generation` and `--layout triton`: each combination the operators or Triton cannot take is one
/// message before anything is written (a task without text generation, fp16, the genai and
/// transformers.js layouts, more sequences than beams by default, top-k sampling, several EOS ids,
/// a Triton repository of a model with a cache).
#[test]
fn generation_and_triton_are_refused_where_they_cannot_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixture();
    let o = out.to_str().unwrap();
    let export = |m: &Path, extra: &[&str]| gpt2c(&[&["export", m.to_str().unwrap(), "-o", o][..], extra].concat());
    let with_generation = |name: &str, settings: serde_json::Value| {
        let dir = tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let ckpt = copy_fixture(&dir);
        fs::write(ckpt.join("generation_config.json"), settings.to_string()).unwrap();
        ckpt
    };
    let cases: Vec<(PathBuf, Vec<&str>, &str)> = vec![
        (
            model.clone(),
            vec!["--generation", "greedy-search", "--task", "feature-extraction"],
            "not feature-extraction",
        ),
        (model.clone(), vec!["--generation", "greedy-search", "--dtype", "fp16"], "--dtype fp16"),
        (model.clone(), vec!["--generation", "greedy-search", "--layout", "genai"], "--layout genai"),
        (
            model.clone(),
            vec!["--generation", "beam-search", "--kv-cache", "shared", "--target", "ort"],
            "--kv-cache shared",
        ),
        (model.clone(), vec!["--generation", "sampling"], "`top_k` (50, transformers' default)"),
        (model.clone(), vec!["--temperature", "0.5"], "need --generation"),
        (model.clone(), vec!["--generation", "greedy-search", "--max-new-tokens", "5"], "--layout triton"),
        (
            model.clone(),
            vec![
                "--generation",
                "beam-search",
                "--layout",
                "triton",
                "--num-beams",
                "2",
                "--num-return-sequences",
                "3",
            ],
            "`num_return_sequences` (3) must be from 1 to num_beams (2)",
        ),
        (model.clone(), vec!["--layout", "triton", "--task", "text-generation-with-past"], "stateless"),
        (model.clone(), vec!["--layout", "triton", "--triton-model-name", "a/b"], "--triton-model-name"),
        (
            with_generation(
                "beams",
                serde_json::json!({"num_beams": 2, "num_return_sequences": 3, "eos_token_id": 999}),
            ),
            vec!["--generation", "beam-search"],
            "`num_return_sequences` (3)",
        ),
        (
            with_generation("eos", serde_json::json!({"eos_token_id": [1, 2]})),
            vec!["--generation", "greedy-search"],
            "`eos_token_id` has 2 ids",
        ),
        (
            with_generation("typical", serde_json::json!({"typical_p": 0.5})),
            vec!["--generation", "greedy-search"],
            "`typical_p`",
        ),
    ];
    for (m, extra, needle) in cases {
        let output = export(&m, &extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle) && stderr.trim_end().lines().count() == 1, "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "{extra:?} wrote {o}");
    }
    // Without --generation, a Triton repository holds the stateless text-generation task.
    let output = export(&model, &["--layout", "triton", "-q"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let config = fs::read_to_string(out.join("tiny-default/config.pbtxt")).unwrap();
    assert!(
        config.contains("(text-generation)") && config.contains("stateless") && config.contains("TYPE_INT64"),
        "{config}"
    );
    assert!(config.contains("name: \"logits\"") && !config.contains("present"), "{config}");
    let help = String::from_utf8(gpt2c(&["export", "--help"]).stdout).unwrap();
    for option in ["--generation", "greedy-search", "--triton-model-name", "--temperature", "GroupQueryAttention"] {
        assert!(help.contains(option), "export --help lacks {option}");
    }
}

/// `--config FILE --random-init --seed N` builds from a config alone; the same seed gives the same
/// bytes, another seed other weights; --config needs --random-init, and a folder excludes --config.
#[test]
fn export_from_a_config_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/heads/random-init/config.json");
    let run = |out: &str, seed: &str| {
        let out = tmp.path().join(out);
        let o = gpt2c(&[
            "export",
            "--config",
            config.to_str().unwrap(),
            "--random-init",
            "--seed",
            seed,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        fs::read(out.join("model.onnx")).unwrap()
    };
    let (a, b, c) = (run("a", "1"), run("b", "1"), run("c", "2"));
    assert!(a == b && a != c, "seeded random init is deterministic and seed-dependent");
    let o = gpt2c(&["export", "--config", config.to_str().unwrap(), "-o", tmp.path().join("d").to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--random-init"));
    let o = gpt2c(&[
        "export",
        fixture().to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--random-init",
        "-o",
        "x",
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not both"));
}

/// `gpt2c inspect --json` describes an export: I/O dims, the op histogram, parameters by element
/// type, external data files and metadata; a file that is not ONNX is one message and exit code 2.
#[test]
fn inspect_describes_an_export() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let src = fixture();
    let args = ["export", src.to_str().unwrap(), "-q", "--external-data", "always", "-o", out.to_str().unwrap()];
    assert!(gpt2c(&args).status.success());
    let o = gpt2c(&["inspect", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["inputs"][0]["name"], "input_ids");
    assert_eq!(d["inputs"][0]["shape"], serde_json::json!(["batch_size", "sequence_length"]));
    assert_eq!(d["outputs"][0]["shape"][2], 1000);
    assert_eq!(d["ops"]["LayerNormalization"], 5, "ln_1, ln_2 per layer and ln_f");
    // 2 layers of n_embd 32 plus wte (1000×32) and wpe (64×32): the fixture's 59,528 float weights.
    assert_eq!(d["initializers"]["by_dtype"]["float"]["elements"], 59_528);
    let data = fs::metadata(out.join("model.onnx_data")).unwrap().len();
    let referenced = d["initializers"]["external_files"]["model.onnx_data"].as_u64().unwrap();
    assert!(referenced > 200_000 && referenced <= data, "{referenced} of {data}");
    assert_eq!(d["metadata"]["gpt2c.task"], "text-generation-with-past");
    // The formats as keys of their own, and the description older readers know.
    assert_eq!(
        (&d["metadata"]["gpt2c.dtype"], &d["metadata"]["gpt2c.quantize"], &d["metadata"]["gpt2c.target"]),
        (&serde_json::json!("fp32"), &serde_json::json!("none"), &serde_json::json!("portable"))
    );
    assert_eq!(d["metadata"]["gpt2c.precision"], "fp32");
    let o = gpt2c(&["inspect", fixture().join("config.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an ONNX model"));
}

/// `gpt2c verify` as a CI step: exit 0 with a `gpt2c.verify/1` JSON report when the export passes,
/// 1 when a check fails (here: a zero tolerance no float computation meets), 2 for usage and I/O
/// errors, each with one readable message.
#[test]
fn verify_reports_json_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let src = fixture();
    assert!(gpt2c(&["export", src.to_str().unwrap(), "-q", "-o", out.to_str().unwrap()]).status.success());
    let (out_s, src_s) = (out.to_str().unwrap(), src.to_str().unwrap());
    let o = gpt2c(&["verify", out_s, "--reference", src_s, "--backends", "tract", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["schema"], "gpt2c.verify/1");
    assert_eq!(d["passed"], true);
    assert_eq!(d["task"], "text-generation-with-past");
    let checks: Vec<&str> = d["checks"].as_array().unwrap().iter().map(|c| c["check"].as_str().unwrap()).collect();
    for name in [
        "protobuf",
        "versions",
        "names",
        "topology",
        "initializers",
        "external_data",
        "operators",
        "contract",
        "inference",
    ] {
        assert!(checks.contains(&name), "{name} missing from {checks:?}");
    }
    let cases: Vec<&str> = d["numeric"].as_array().unwrap().iter().map(|n| n["case"].as_str().unwrap()).collect();
    assert_eq!(cases, ["prompt", "padded_batch", "decode_step"]);
    for phase in ["structure", "reference", "tract"] {
        assert!(d["timings_s"][phase].is_number(), "{phase} timing missing");
    }
    let logits = &d["numeric"][0]["outputs"][0];
    assert_eq!(logits["output"], "logits");
    assert!(logits["max_abs_error"].as_f64().unwrap() < 1e-4 && logits["max_rel_error"].is_number());

    let o = gpt2c(&["verify", out_s, "--reference", src_s, "--backends", "tract", "--tolerance", "0,0"]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("FAIL tract prompt logits: max abs error"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("FAILED in")), "{text}");

    for (args, needle) in [
        (vec!["verify", "/nonexistent/export"], "/nonexistent/export: no such file or folder"),
        (vec!["verify", out_s, "--tolerance", "tight"], "`tight` is not a non-negative number"),
        // The cause is chained, not flattened into the message.
        (
            vec!["verify", out_s, "--reference", "/nonexistent/ckpt"],
            "reference checkpoint /nonexistent/ckpt\n  caused by: /nonexistent/ckpt: no such folder",
        ),
        (vec!["verify", out_s, "--backends", "onnx"], "invalid value 'onnx'"),
    ] {
        let o = gpt2c(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
