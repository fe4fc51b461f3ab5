#!/usr/bin/env python3
"""Makes an assistant for assisted generation from a checkpoint's first blocks.

    python tests/bench/make_layer_draft.py CHECKPOINT OUT --layers 2

OUT holds the same embeddings, final LayerNorm and tied LM head with only blocks 0..layers-1, and the
tokenizer files copied beside them: a draft that shares the target's vocabulary and often agrees with it
(the pair `gpt2c bench TARGET_EXPORT --assistant-model DRAFT_EXPORT` measures). Uses safetensors only.
"""
import argparse
import json
import os
import re
import shutil

from safetensors.numpy import load_file, save_file


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--layers", type=int, required=True)
    args = p.parse_args()
    with open(os.path.join(args.checkpoint, "config.json")) as f:
        config = json.load(f)
    if not 1 <= args.layers < config["n_layer"]:
        raise SystemExit(f"--layers must be between 1 and {config['n_layer'] - 1}, got {args.layers}")
    tensors = load_file(os.path.join(args.checkpoint, "model.safetensors"))
    kept = {}
    for name, value in tensors.items():
        block = re.search(r"(?:^|\.)h\.(\d+)\.", name)
        if block is None or int(block.group(1)) < args.layers:
            kept[name] = value
    os.makedirs(args.out, exist_ok=True)
    save_file(kept, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    config_layers, config["n_layer"] = config["n_layer"], args.layers
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in os.listdir(args.checkpoint):
        if name not in ("config.json", "model.safetensors") and not name.endswith(".py"):
            path = os.path.join(args.checkpoint, name)
            if os.path.isfile(path):
                shutil.copy(path, os.path.join(args.out, name))
    print(f"{args.layers} of {config_layers} blocks -> {args.out}")


if __name__ == "__main__":
    main()
