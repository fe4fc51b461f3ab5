#!/usr/bin/env python3
"""Fills fuzz/corpus/<target>/ (git-ignored) with seed inputs.

- every target: the committed seeds in fuzz/seeds/<target>/ and the inputs that once crashed it,
  fuzz/regressions/<target>/;
- config_json: every config.json under models/;
- safetensors_header: for each models/**/*.safetensors, its header plus 64 bytes of data (a file
  cut short) and a small valid file of its three smallest tensors (each at most 1 KiB);
- onnx_model: proto/tests/data/reference.onnx and, when a gpt2c binary is at
  target/release/gpt2c (or $GPT2C), tiny --random-init exports for each task, fp16, int8 and
  opset 14;
- torch_pickle: the data.pkl of each models/**/pytorch_model.bin.
- generate_settings: the generate() keyword arguments of every case in models/generation/*.json and
  the settings that once crashed the driver (beam sampling with few candidates, huge counts),
  each over a 40-token vocabulary with spread logits, ties and a NaN.
- completion_request: only the committed seeds (request bodies for every field the server's parser
  knows, valid and invalid).

Usage: python3 fuzz/seed.py    (from anywhere; uses only the standard library)
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
CORPUS = FUZZ / "corpus"
TARGETS = ["safetensors_header", "config_json", "onnx_model", "torch_pickle", "generate_settings", "completion_request"]
DTYPE_SIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}

# A GPT-2 small enough that its exports are ~10 KB.
TINY_CONFIG = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "n_embd": 4,
    "n_head": 1,
    "n_layer": 1,
    "n_positions": 4,
    "vocab_size": 8,
    "bos_token_id": 7,
    "eos_token_id": 7,
}
EXPORTS = {
    "lm-with-past": [],
    "lm": ["--task", "text-generation"],
    "features": ["--task", "feature-extraction-with-past"],
    "seq-cls": ["--task", "text-classification"],
    "tok-cls": ["--task", "token-classification"],
    "qa": ["--task", "question-answering"],
    "multiple-choice": ["--task", "multiple-choice"],
    "fp16": ["--dtype", "fp16"],
    "int8": ["--quantize", "int8"],
    "opset14": ["--opset", "14"],
}


def safetensors_seeds(out: Path) -> int:
    n = 0
    for path in sorted((ROOT / "models").rglob("*.safetensors")):
        data = path.read_bytes()
        (header_len,) = struct.unpack("<Q", data[:8])
        name = "_".join(path.relative_to(ROOT / "models").parts)
        (out / f"{name}.cut").write_bytes(data[: 8 + header_len + 64])
        header = json.loads(data[8 : 8 + header_len])
        size = lambda entry: entry["data_offsets"][1] - entry["data_offsets"][0]
        tensors = sorted(
            ((k, v) for k, v in header.items() if k != "__metadata__" and size(v) <= 1024),
            key=lambda kv: size(kv[1]),
        )[:3]
        small, body = {"__metadata__": {"format": "pt"}}, b""
        for k, v in tensors:
            begin, end = v["data_offsets"]
            small[k] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [len(body), len(body) + end - begin]}
            body += data[8 + header_len + begin : 8 + header_len + end]
        text = json.dumps(small, separators=(",", ":")).encode()
        (out / f"{name}.small").write_bytes(struct.pack("<Q", len(text)) + text + body)
        n += 2
    return n


def onnx_seeds(out: Path) -> int:
    shutil.copy(ROOT / "proto/tests/data/reference.onnx", out / "reference.onnx")
    gpt2c = Path(os.environ.get("GPT2C", ROOT / "target/release/gpt2c"))
    if not gpt2c.is_file():
        print(f"{gpt2c}: not built; onnx_model gets only the committed seeds (cargo build --release -p gpt2c)")
        return 1
    n = 1
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(TINY_CONFIG))
        for name, args in EXPORTS.items():
            dest = Path(tmp) / name
            cmd = [str(gpt2c), "export", "--config", str(config), "--random-init", "-o", str(dest), *args]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"export {name} failed: {done.stderr.strip()}", file=sys.stderr)
                continue
            shutil.copy(dest / "model.onnx", out / f"tiny-{name}.onnx")
            n += 1
    return n


def pickle_seeds(out: Path) -> int:
    n = 0
    for path in sorted((ROOT / "models").rglob("pytorch_model.bin")):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("data.pkl"):
                    (out / ("_".join(path.relative_to(ROOT / "models").parts) + ".pkl")).write_bytes(archive.read(name))
                    n += 1
    return n


# Settings that once crashed `gpt2c generate`, beside the fixtures' own.
GENERATE_SEEDS = [
    {"do_sample": True, "num_beams": 4, "top_k": 2},
    {"do_sample": True, "num_beams": 64},
    {"do_sample": True, "num_return_sequences": 3000000000},
    {"num_beams": 3000000000},
    {"max_time": 1e300},
    {"suppress_tokens": list(range(40))},
    {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0, "suppress_tokens": list(range(39))},
]


ID_KEYS = {"eos_token_id", "pad_token_id", "bos_token_id", "forced_bos_token_id", "forced_eos_token_id",
           "suppress_tokens", "begin_suppress_tokens", "bad_words_ids", "sequence_bias"}


def in_vocab(value, vocab=40):
    """Token ids of the fixtures' 1,000-token model mapped into the seeds' 40-token one."""
    if isinstance(value, bool) or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value % vocab
    return [in_vocab(v, vocab) for v in value]


def generate_seeds(out: Path) -> int:
    cases = [{k: in_vocab(v) if k in ID_KEYS else v for k, v in c["kwargs"].items()}
             for f in sorted((ROOT / "models" / "generation").glob("*.json"))
             for c in json.loads(f.read_text())["cases"]]
    logits = bytearray()
    for i in range(120):
        logits += bytes([5 + i % 7, (i * 37) % 256])
    logits += bytes([4, 0, 4, 0, 0, 0])  # a tie, another, then NaN
    n = 0
    for settings in cases + GENERATE_SEEDS:
        header = bytes([39, 31, 0, 3, 1, 2, 3])
        (out / f"seed-{n:03}").write_bytes(header + json.dumps(settings).encode() + b"\0" + bytes(logits))
        n += 1
    return n


def main() -> None:
    for target in TARGETS:
        (CORPUS / target).mkdir(parents=True, exist_ok=True)
        for kind in ["seeds", "regressions"]:
            for f in sorted((FUZZ / kind / target).glob("*")):
                shutil.copy(f, CORPUS / target / f.name)
    configs = sorted((ROOT / "models").rglob("config.json"))
    for path in configs:
        shutil.copy(path, CORPUS / "config_json" / "_".join(path.relative_to(ROOT / "models").parts))
    counts = {
        "config_json": len(configs),
        "safetensors_header": safetensors_seeds(CORPUS / "safetensors_header"),
        "onnx_model": onnx_seeds(CORPUS / "onnx_model"),
        "torch_pickle": pickle_seeds(CORPUS / "torch_pickle"),
        "generate_settings": generate_seeds(CORPUS / "generate_settings"),
    }
    for target in TARGETS:
        n = counts.get(target, 0)
        print(f"{target}: {n} seeds from the repository, {len(list((CORPUS / target).iterdir()))} files in corpus/{target}")


if __name__ == "__main__":
    main()
