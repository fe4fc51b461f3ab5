//! `gpt2c serve` end to end: the binary on an ephemeral loopback port, spoken to over real HTTP.
//!
//! The property tested hardest: a request's output does not depend on its company — 16 mixed
//! requests sent at once each equal the same request sent alone, on ONNX Runtime and on tract,
//! and greedy and beam requests equal `gpt2c generate`. The model is the shared tiny-trained
//! GPT-2 (`$GPT2C_SHARED/models/tiny-trained`, default `../shared`), whose top logits are well
//! separated. Also: streams add up to the final text, 429 when the queue is full, a disconnect
//! frees its rows, every bad input gets 400 naming its field, SIGTERM loses no response, and the
//! official `openai` Python client (GPT2C_PYTHON) gets what the API promises.
//!
//! Under GPT2C_CI=1 nothing here skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::*;

/// What company must not change: each choice's text, finish reason and logprob tokens.
fn essence(response: &Value) -> Value {
    let choices = response["choices"].as_array().unwrap_or_else(|| panic!("no choices: {response}"));
    Value::Array(
        choices
            .iter()
            .map(|c| {
                json!({"index": c["index"], "text": c["text"], "finish_reason": c["finish_reason"],
                            "logprob_tokens": c["logprobs"]["tokens"]})
            })
            .collect(),
    )
}

const SYSTEM: &str = "You are a careful storyteller. Every story you tell is short, kind and simple, \
    with a beginning, a middle and an end, and it is told in plain words that a child can follow. \
    Here is the next story.";

/// Sixteen requests mixing every kind of setting, lengths and a shared prefix.
fn mixed_requests() -> Vec<Value> {
    let m = "tiny-trained";
    let long: String = (0..12).map(|_| "The cat sat on the mat and looked at the bird. ").collect();
    vec![
        json!({"model": m, "prompt": "The little dog ran", "max_tokens": 24, "temperature": 0}),
        json!({"model": m, "prompt": "Once upon a time there was a girl who", "max_tokens": 40}),
        json!({"model": m, "prompt": "She opened the door and", "max_tokens": 16, "num_beams": 3, "n": 2}),
        json!({"model": m, "prompt": "In the morning", "max_tokens": 30, "temperature": 0.8, "seed": 7, "top_k": 40,
               "top_p": 0.9, "typical_p": 0.95}),
        json!({"model": m, "prompt": "He said that", "max_tokens": 20, "temperature": 1.2, "top_p": 0.9, "seed": 11, "n": 2}),
        json!({"model": m, "prompt": "The sun was", "max_tokens": 30, "repetition_penalty": 1.3, "no_repeat_ngram_size": 3}),
        json!({"model": m, "prompt": format!("{SYSTEM} A boy found a"), "max_tokens": 20}),
        json!({"model": m, "prompt": format!("{SYSTEM} The old man"), "max_tokens": 20}),
        json!({"model": m, "prompt": format!("{SYSTEM} One day"), "max_tokens": 18, "temperature": 0.7, "seed": 3}),
        json!({"model": m, "prompt": "They went to the park", "max_tokens": 14, "num_beams": 2, "do_sample": true, "seed": 5}),
        json!({"model": m, "prompt": "Tom had a", "max_tokens": 30, "min_new_tokens": 10, "stop": ["."]}),
        json!({"model": m, "prompt": "It was a cold", "max_tokens": 25, "temperature": 1.0, "typical_p": 0.9, "seed": 21}),
        json!({"model": m, "prompt": "The bird", "max_tokens": 12, "logprobs": 3}),
        json!({"model": m, "prompt": "Lily liked", "max_tokens": 12, "echo": true}),
        json!({"model": m, "prompt": long, "max_tokens": 10}),
        json!({"model": m, "prompt": ["A red ball", "Two friends"], "max_tokens": 15, "temperature": 0}),
    ]
}

fn company_independence(backend: &str, export_options: &[&str]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export_with(export_options) else { return };
    // Small prefill chunks: the long prompt is prefilled in pieces between decode steps.
    let server = Server::start(&dir, backend, &["--max-batch-rows", "64", "--prefill-chunk", "16"]);
    let requests = mixed_requests();
    // The shared system prompt's length in tokens, as the server counts it.
    let (status, system) = server.post(&json!({"model": "tiny-trained", "prompt": SYSTEM, "max_tokens": 1}));
    assert_eq!(status, 200, "{system}");
    let system_tokens = system["usage"]["prompt_tokens"].as_f64().unwrap();
    let alone: Vec<Value> = requests
        .iter()
        .map(|r| {
            let (status, body) = server.post(r);
            assert_eq!(status, 200, "{r}: {body}");
            body
        })
        .collect();
    let steps_alone = server.metric("gpt2c_decode_steps_total");
    let reused_alone = server.metric("gpt2c_prefix_cache_reused_tokens_total");
    let id = |i: usize| format!("{backend}-burst-{}-{i}", export_options.len());
    let together: Vec<Value> = std::thread::scope(|s| {
        let (server, id) = (&server, &id);
        let handles: Vec<_> =
            requests.iter().enumerate().map(|(i, r)| s.spawn(move || server.post_with_id(r, &id(i)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    })
    .into_iter()
    .map(|(status, body)| {
        assert_eq!(status, 200, "{body}");
        body
    })
    .collect();
    assert_eq!(together.len(), requests.len());
    for ((r, a), t) in requests.iter().zip(&alone).zip(&together) {
        assert_eq!(essence(a), essence(t), "{backend}: {r} alone vs in company");
        // Every choice's log-probabilities and alternatives agree to float rounding.
        let (ca, ct) = (a["choices"].as_array().unwrap(), t["choices"].as_array().unwrap());
        assert_eq!(ca.len(), ct.len());
        for (x, y) in ca.iter().zip(ct) {
            let (lx, ly) = (&x["logprobs"], &y["logprobs"]);
            assert_eq!(lx.is_null(), ly.is_null(), "{r}");
            if lx.is_null() {
                continue;
            }
            let (px, py) = (lx["token_logprobs"].as_array().unwrap(), ly["token_logprobs"].as_array().unwrap());
            assert_eq!(px.len(), py.len());
            for (p, q) in px.iter().zip(py) {
                assert!((p.as_f64().unwrap() - q.as_f64().unwrap()).abs() < 1e-5, "{backend}: {p} vs {q}");
            }
            let (tx, ty) = (lx["top_logprobs"].as_array().unwrap(), ly["top_logprobs"].as_array().unwrap());
            assert_eq!(tx.len(), ty.len());
            for (p, q) in tx.iter().zip(ty) {
                let (p, q) = (p.as_object().unwrap(), q.as_object().unwrap());
                assert_eq!(p.keys().collect::<Vec<_>>(), q.keys().collect::<Vec<_>>(), "the same alternatives");
                for (k, v) in p {
                    assert!(
                        (v.as_f64().unwrap() - q[k].as_f64().unwrap()).abs() < 1e-5,
                        "{backend}: {k}: {v} vs {}",
                        q[k]
                    );
                }
            }
        }
    }
    // The burst really was batched: fewer decode steps than running the requests one by one.
    let steps_together = server.metric("gpt2c_decode_steps_total") - steps_alone;
    assert!(steps_together < 0.6 * steps_alone, "{steps_together} steps together vs {steps_alone} alone");
    // The shared system prompt was taken from the prefix cache, not recomputed.
    let reused = server.metric("gpt2c_prefix_cache_reused_tokens_total") - reused_alone;
    assert!(reused >= system_tokens, "{reused} positions reused in the burst; the system prompt is {system_tokens}");
    // The beam request (3 rows), the long prompt prefilled in chunks and the logprobs request each
    // decoded beside other requests' rows: the most rows of their steps exceed their own.
    for (i, own) in [(2, 3), (14, 1), (12, 1)] {
        let lines = server.log_of(&id(i), Duration::from_secs(10));
        assert_eq!(lines.len(), 1, "{lines:?}");
        let peak = lines[0]["batch_rows_peak"].as_u64().unwrap_or(0);
        assert!(peak > own, "{backend}: request {i} decoded with at most {peak} rows, its own {own}");
    }
    // Every choice count is as asked; texts are not empty.
    assert_eq!(alone[2]["choices"].as_array().unwrap().len(), 2);
    assert_eq!(alone[4]["choices"].as_array().unwrap().len(), 2);
    assert_eq!(alone[15]["choices"].as_array().unwrap().len(), 2);
    assert!(alone[13]["choices"][0]["text"].as_str().unwrap().starts_with("Lily liked"));
    assert_eq!(alone[12]["choices"][0]["logprobs"]["top_logprobs"][0].as_object().unwrap().len(), 3);
    let stop_text = alone[10]["choices"][0]["text"].as_str().unwrap();
    assert!(!stop_text.contains('.'), "stop strings are cut: {stop_text:?}");

    // Greedy, beam search and seeded sampling (top_k, top_p, typical_p, n) equal `gpt2c generate`
    // with the same settings and seed.
    for (i, args) in [
        (1, vec!["--max-new-tokens", "40"]),
        (2, vec!["--max-new-tokens", "16", "--num-beams", "3", "--num-return-sequences", "2"]),
        (
            3,
            vec![
                "--max-new-tokens",
                "30",
                "--do-sample",
                "--temperature",
                "0.8",
                "--seed",
                "7",
                "--top-k",
                "40",
                "--top-p",
                "0.9",
                "--typical-p",
                "0.95",
            ],
        ),
        (
            4,
            vec![
                "--max-new-tokens",
                "20",
                "--do-sample",
                "--temperature",
                "1.2",
                "--top-p",
                "0.9",
                "--seed",
                "11",
                "--num-return-sequences",
                "2",
            ],
        ),
        (
            11,
            vec!["--max-new-tokens", "25", "--do-sample", "--temperature", "1.0", "--typical-p", "0.9", "--seed", "21"],
        ),
    ] {
        let prompt = requests[i]["prompt"].as_str().unwrap();
        let generated = generate_texts(&dir, backend, &[prompt], &args);
        let served: Vec<&str> =
            alone[i]["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
        assert_eq!(generated, served, "{backend}: request {i} vs gpt2c generate");
    }
    // A seeded request of several prompts samples each prompt as if it came alone: each equals
    // `gpt2c generate -p PROMPT --seed S` of its own (one call with both prompts draws them from
    // one generator, row after row at each step, so it gives other samples).
    let prompts = ["A red ball", "Two friends"];
    let (status, multi) = server
        .post(&json!({"model": "tiny-trained", "prompt": prompts, "max_tokens": 15, "temperature": 0.9, "seed": 5}));
    assert_eq!(status, 200, "{multi}");
    let args = ["--max-new-tokens", "15", "--do-sample", "--temperature", "0.9", "--seed", "5"];
    let served: Vec<&str> = multi["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    let each: Vec<String> = prompts.iter().flat_map(|p| generate_texts(&dir, backend, &[p], &args)).collect();
    assert_eq!(served, each, "{backend}: each prompt as if alone");
    let together = generate_texts(&dir, backend, &prompts, &args);
    assert_eq!(together.len(), 2);
    assert_ne!(together, each, "one generator draws both prompts' samples, step by step, in one call");
}

/// `gpt2c generate`'s continuations (trailing EOS dropped) of `prompts` with `args`.
fn generate_texts(dir: &str, backend: &str, prompts: &[&str], args: &[&str]) -> Vec<String> {
    let o = gpt2c()
        .args(["generate", dir, "--backend", backend, "--json", "-q"])
        .args(prompts.iter().flat_map(|p| ["-p", p]))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let sequences = doc["sequences"].as_array().unwrap_or_else(|| panic!("{doc}"));
    sequences
        .iter()
        .map(|g| g["continuation"].as_str().unwrap().trim_end_matches("<|endoftext|>").to_string())
        .collect()
}

#[test]
fn requests_in_company_equal_requests_alone_on_onnx_runtime() {
    if ort_available() {
        company_independence("ort", &[]);
    }
}

/// With `--kv-cache shared` each row keeps its own length in one buffer: rows join and leave
/// without the others moving, beams are reordered in place.
#[test]
fn requests_in_company_equal_requests_alone_with_a_shared_cache() {
    if ort_available() {
        company_independence("ort", &["--target", "ort", "--kv-cache", "shared"]);
    }
}

#[test]
fn requests_in_company_equal_requests_alone_on_tract() {
    company_independence("tract", &[]);
}

#[test]
fn streamed_pieces_add_up_and_the_openai_client_agrees() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &[]);
    for body in [
        json!({"model": "tiny-trained", "prompt": "Once upon a time", "max_tokens": 40}),
        json!({"model": "tiny-trained", "prompt": "The dog", "max_tokens": 40, "stop": [" the", "."], "temperature": 0.9, "seed": 4}),
        json!({"model": "tiny-trained", "prompt": ["A cat", "A hat"], "max_tokens": 12, "n": 2, "temperature": 1.0, "seed": 9}),
        json!({"model": "tiny-trained", "prompt": "She saw", "max_tokens": 10, "num_beams": 2}),
    ] {
        let (status, whole) = server.post(&body);
        assert_eq!(status, 200, "{whole}");
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let events = server.stream(&streamed);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], whole["usage"], "usage of the stream");
        for choice in whole["choices"].as_array().unwrap() {
            let index = &choice["index"];
            let mine: Vec<&Value> =
                chunks.iter().flat_map(|c| c["choices"].as_array().unwrap()).filter(|c| &c["index"] == index).collect();
            let text: String = mine.iter().map(|c| c["text"].as_str().unwrap()).collect();
            assert_eq!(text, choice["text"].as_str().unwrap(), "{body}: choice {index}");
            let finishes: Vec<&Value> = mine.iter().map(|c| &c["finish_reason"]).filter(|f| !f.is_null()).collect();
            assert_eq!(finishes, vec![&choice["finish_reason"]], "one finish reason, in the last chunk");
            assert!(mine.last().unwrap()["finish_reason"].is_string());
        }
    }

    let Some(python) = std::env::var_os("GPT2C_PYTHON").map(PathBuf::from).filter(|p| p.is_file()).or_else(|| {
        assert!(!ci(), "GPT2C_PYTHON must name a Python with `openai` under GPT2C_CI=1");
        None
    }) else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/openai_completions.py");
    let base = format!("http://{}/v1", server.addr);
    let o = Command::new(python)
        .args([script.to_str().unwrap(), &base, "tiny-trained", "Once upon a time", "40"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let client: Value = serde_json::from_slice(&o.stdout).unwrap();
    let (_, ours) = server.post(&json!({"model": "tiny-trained", "prompt": "Once upon a time", "max_tokens": 40}));
    assert_eq!(client["object"], "text_completion");
    assert_eq!(client["text"], ours["choices"][0]["text"]);
    assert_eq!(client["finish_reason"], ours["choices"][0]["finish_reason"]);
    let tokens = |u: &Value| [&u["prompt_tokens"], &u["completion_tokens"], &u["total_tokens"]].map(Value::clone);
    assert_eq!(tokens(&client["usage"]), tokens(&ours["usage"]));
    let pieces: String = client["pieces"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(pieces, ours["choices"][0]["text"].as_str().unwrap());
    assert_eq!(client["stream_finish_reason"], ours["choices"][0]["finish_reason"]);
    assert_eq!(tokens(&client["stream_usage"]), tokens(&ours["usage"]));
}

#[test]
fn bad_requests_get_400_naming_the_field() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &["--max-body-kib", "4", "--max-batch-rows", "8"]);
    let m = "tiny-trained";
    let long_prompt: String = (0..600).map(|_| " cat").collect();
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{not json".into(), 400, None),
        ("[1, 2]".into(), 400, None),
        (json!({"prompt": "Hi"}).to_string(), 400, Some("model")),
        (json!({"model": "other", "prompt": "Hi"}).to_string(), 404, Some("model")),
        (json!({"model": m}).to_string(), 400, Some("prompt")),
        (json!({"model": m, "prompt": 5}).to_string(), 400, Some("prompt")),
        (json!({"model": m, "prompt": ""}).to_string(), 400, Some("prompt")),
        (json!({"model": m, "prompt": long_prompt}).to_string(), 400, Some("prompt")),
        (json!({"model": m, "prompt": [[1, 2], [50300]]}).to_string(), 400, Some("prompt")),
        (json!({"model": m, "prompt": "Hi", "max_tokens": "ten"}).to_string(), 400, Some("max_tokens")),
        (json!({"model": m, "prompt": "Hi", "max_tokens": 0}).to_string(), 400, Some("max_tokens")),
        (json!({"model": m, "prompt": "Hi", "temperature": -1}).to_string(), 400, Some("temperature")),
        (json!({"model": m, "prompt": "Hi", "top_p": 1.5}).to_string(), 400, Some("top_p")),
        (json!({"model": m, "prompt": "Hi", "n": 3}).to_string(), 400, Some("n")),
        (json!({"model": m, "prompt": "Hi", "n": 9, "temperature": 1}).to_string(), 400, Some("n")),
        (json!({"model": m, "prompt": "Hi", "logprobs": 6}).to_string(), 400, Some("logprobs")),
        (json!({"model": m, "prompt": "Hi", "stream": "yes"}).to_string(), 400, Some("stream")),
        (
            json!({"model": m, "prompt": "Hi", "stream_options": {"include_usage": true}}).to_string(),
            400,
            Some("stream_options"),
        ),
        (json!({"model": m, "prompt": "Hi", "top_k": -3}).to_string(), 400, Some("top_k")),
        (
            json!({"model": m, "prompt": "Hi", "prompt_lookup_num_tokens": 4}).to_string(),
            400,
            Some("prompt_lookup_num_tokens"),
        ),
        (json!({"model": m, "prompt": "Hi", "num_beams": 2, "n": 3}).to_string(), 400, Some("n")),
        (
            json!({"model": m, "prompt": "Hi", "max_tokens": 5, "max_new_tokens": 6}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"model": m, "prompt": "Hi", "temperature": 0.5, "do_sample": false}).to_string(),
            400,
            Some("temperature"),
        ),
        (json!({"model": m, "prompt": "Hi", "stop": "x", "stop_strings": ["y"]}).to_string(), 400, Some("stop")),
        (json!({"model": m, "prompt": "Hi", "repetition_penalty": 0}).to_string(), 400, Some("repetition_penalty")),
        (json!({"model": m, "prompt": "Hi", "frequency_penalty": 0.5}).to_string(), 400, Some("frequency_penalty")),
        (json!({"model": m, "prompt": "Hi", "logit_bias": {"99999": 1}}).to_string(), 400, Some("logit_bias")),
        (json!({"model": m, "prompt": "Hi", "wat": 1}).to_string(), 400, Some("wat")),
        (json!({"model": m, "prompt": "Hi", "eos_token_id": 1e9}).to_string(), 400, Some("eos_token_id")),
        (json!({"model": m, "prompt": "Hi", "max_time": -1}).to_string(), 400, Some("max_time")),
        (json!({"model": m, "prompt": "Hi", "num_beams": 100}).to_string(), 400, Some("num_beams")),
        (json!({"model": m, "prompt": "x".repeat(5000)}).to_string(), 413, None),
    ];
    for (body, status, param) in &cases {
        let (got, _, text) = server.request("POST", "/v1/completions", body);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let shown = &body[..body.len().min(80)];
        assert_eq!(got, *status, "{shown}: {v}");
        let error = &v["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{shown}: {v}");
        assert!(error["type"].is_string(), "{v}");
        assert_eq!(error["param"].as_str(), *param, "{shown}: {v}");
    }
    let (status, body) = server.get("/nowhere");
    assert_eq!(status, 404, "{body}");
    assert_eq!(server.metric("gpt2c_requests_total{outcome=\"invalid\"}"), cases.len() as f64);
    // Still serving.
    let (status, _) = server.post(&json!({"model": m, "prompt": "Hi", "max_tokens": 3}));
    assert_eq!(status, 200);
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&models).unwrap()["data"][0]["id"], "tiny-trained");
}

/// A stream that keeps its row busy for a while: the whole context, EOS forbidden.
fn long_stream() -> Value {
    json!({"model": "tiny-trained", "prompt": "Once", "max_tokens": 500, "min_new_tokens": 500, "stream": true})
}

#[test]
fn a_full_queue_answers_429_and_a_disconnect_frees_its_rows() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &["--max-batch-rows", "1", "--max-queue", "1", "--threads", "1"]);
    let mut first = server.open_stream(&long_stream());
    assert!(next_event(&mut first).is_some());
    // The one row is taken: the next request waits, and the one after finds the queue full.
    let queued = std::thread::scope(|s| {
        let waiting = s.spawn(|| server.post(&json!({"model": "tiny-trained", "prompt": "Hi", "max_tokens": 2})));
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.metric("gpt2c_queue_depth") < 1.0 {
            assert!(Instant::now() < deadline, "the second request never queued");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (status, head, body) = server.request(
            "POST",
            "/v1/completions",
            &json!({"model": "tiny-trained", "prompt": "Hi", "max_tokens": 2}).to_string(),
        );
        assert_eq!(status, 429, "{body}");
        assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "rate_limit_error");
        // Hanging up on the stream frees the row for the waiting request.
        drop(first);
        waiting.join().unwrap()
    });
    assert_eq!(queued.0, 200, "{}", queued.1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("gpt2c_batch_rows") > 0.0 || server.metric("gpt2c_requests_running") > 0.0 {
        assert!(Instant::now() < deadline, "rows were not freed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.metric("gpt2c_requests_total{outcome=\"cancelled\"}"), 1.0);
    assert!(server.metric("gpt2c_generated_tokens_total") < 500.0, "the cancelled stream stopped early");
}

#[test]
fn a_stream_past_its_timeout_ends_with_an_error_event() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &["--request-timeout-s", "0.3", "--threads", "1"]);
    let events = server.stream(&long_stream());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "timeout_error", "{error}");
    assert!(events.len() > 2, "tokens came before the timeout");
    let (status, body) =
        server.post(&json!({"model": "tiny-trained", "prompt": "Once", "max_tokens": 500, "min_new_tokens": 500}));
    assert_eq!(status, 504, "{body}");
    assert_eq!(server.metric("gpt2c_requests_total{outcome=\"timeout\"}"), 2.0);
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_0() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let mut server = Server::start(&dir, "tract", &["--threads", "1"]);
    // Sixteen greedy prompts of the whole context: still running for seconds after SIGTERM.
    let sixteen = json!({"model": "tiny-trained", "prompt": vec!["Once"; 16], "max_tokens": 500,
                         "min_new_tokens": 500, "temperature": 0, "stream": true});
    let mut stream = server.open_stream(&sixteen);
    assert!(next_event(&mut stream).is_some());
    // The shell's own `kill`: nothing beyond sh needs to be installed.
    let kill = Command::new("sh").args(["-c", &format!("kill -TERM {}", server.child.id())]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server.post(&json!({"model": "tiny-trained", "prompt": "Hi", "max_tokens": 2}));
        if status == 503 {
            assert_eq!(body["error"]["type"], "server_error");
            break;
        }
        assert!(Instant::now() < deadline, "new requests were still accepted");
    }
    assert_eq!(server.get("/health").0, 503);
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut stream) {
        events.push(e);
        if events.last().is_some_and(|e| e == "[DONE]") {
            break;
        }
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let said: Vec<String> = server.lines.lock().unwrap().try_iter().collect();
    assert!(said.iter().any(|l| l.contains("stopped")), "{said:?}");
}
