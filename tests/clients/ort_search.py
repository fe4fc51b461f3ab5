#!/usr/bin/env python3
"""Runs a `gpt2c export --generation` model through ONNX Runtime's Python API, as a deployment calls it.

    python tests/clients/ort_search.py MODEL_ONNX CASES_JSON

CASES_JSON: a JSON list of cases, each {"prompts": [[ids], ...], "pad": id, "max_new_tokens": n} plus any of
"min_length", "repetition_penalty", "num_beams", "num_return_sequences", "length_penalty", "seed", and
"fixed": true for a Triton repository's model (it takes input_ids and attention_mask alone). Prompts are
left-padded with `pad` (attention_mask 0 there), int32, and max_length is the padded prompt length plus
max_new_tokens. Prints a JSON list with, per case, "sequences" (every row as the graph returned it,
nested per prompt for beam search) and "scores" (beam search's sequences_scores, else null).
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def run(session, case):
    prompts, pad = case["prompts"], case["pad"]
    width = max(len(p) for p in prompts)
    ids = np.array([[pad] * (width - len(p)) + p for p in prompts], dtype=np.int32)
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=np.int32)
    feed = {"input_ids": ids, "attention_mask": mask}
    if not case.get("fixed"):
        scalars = {
            "max_length": np.array([width + case["max_new_tokens"]], np.int32),
            "min_length": np.array([case.get("min_length", 0)], np.int32),
            "repetition_penalty": np.array([case.get("repetition_penalty", 1.0)], np.float32),
            "num_beams": np.array([case.get("num_beams", 1)], np.int32),
            "num_return_sequences": np.array([case.get("num_return_sequences", 1)], np.int32),
            "length_penalty": np.array([case.get("length_penalty", 1.0)], np.float32),
            "seed": np.array([case.get("seed", 0)], np.int32),
        }
        names = {i.name for i in session.get_inputs()}
        feed.update({k: v for k, v in scalars.items() if k in names})
    outputs = {o.name: v for o, v in zip(session.get_outputs(), session.run(None, feed))}
    scores = outputs.get("sequences_scores")
    return {"sequences": outputs["sequences"].tolist(), "scores": None if scores is None else scores.tolist()}


def main():
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    cases = json.load(open(sys.argv[2]))
    print(json.dumps([run(session, c) for c in cases]))


if __name__ == "__main__":
    main()
