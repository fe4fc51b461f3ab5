#!/usr/bin/env python3
"""Makes gpt2c's test fixtures: small random GPT-2 checkpoints and transformers' reference outputs.

Run from the repository root (needs torch, transformers, tokenizers, safetensors; see README):

    .venv/bin/python models/make_fixtures.py [--shared ../shared]

Everything it writes is committed. It is deterministic (fixed seeds, CPU, fp32), and it records the
transformers and torch versions it used in models/fixtures.json and in each reference file's metadata.

Tokenizer: a byte-level BPE with a 1,000-token vocabulary (999 merges-derived tokens plus
<|endoftext|> as the last id, as in GPT-2), trained on text assembled from the real GPT-2 vocabulary in
../shared/models/gpt2-tokenizer (its first few thousand merged tokens, in merge order, are common
English sub-words), so fixture prompts tokenize like English.

Checkpoints (models/<name>/, saved with save_pretrained; initializer_range is raised from 0.02 so
logits spread over several units and float error stays far below the gaps the tests rely on):
  tiny-default        GPT2Config defaults apart from size: gelu_new, n_inner unset
  tiny-inner-gelu     n_inner=80 with the exact erf `gelu` activation
  tiny-scaled-attn    scale_attn_by_inverse_layer_idx + reorder_and_upcast_attn, 3 layers
  tiny-untied         tie_word_embeddings=False: a separate lm_head.weight
  tiny-default-f16    tiny-default's weights stored as float16
  tiny-default-bf16   tiny-default's weights stored as bfloat16
  tiny-default-sharded tiny-default split into several safetensors shards with an index
  tiny-base-noprefix  tiny-default saved from GPT2Model (weight names without `transformer.`), with
                      expected_generation_config.json: what GenerationConfig.from_model_config derives

Reference outputs (models/<name>/reference.safetensors), computed by transformers' GPT2LMHeadModel
with eager attention in fp32 (for the f16/bf16 variants: the stored weights upcast to fp32):
  a.*  a 7-token prompt, empty past:     input_ids, attention_mask, position_ids, logits, present.{i}.key/value
  b.*  one more token fed a.*'s past:    same names
  c.*  a left-padded batch of two prompts (7 and 4 tokens) with attention_mask and
       position_ids = cumsum(mask) - 1 (pads at 1, as transformers 4.57 builds them)
Variants that hold the same weights as tiny-default (sharded, noprefix) reuse its reference file.
"""
import argparse
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 1000
EOS = VOCAB - 1


def bytes_to_unicode():
    """GPT-2's reversible byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def training_corpus(shared):
    vocab = json.load(open(os.path.join(shared, "models/gpt2-tokenizer/vocab.json")))
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    decode = {v: k for k, v in bytes_to_unicode().items()}
    pieces = []
    for token, i in by_id[256:6256]:
        try:
            pieces.append(bytes(decode[ch] for ch in token).decode("utf-8"))
        except (KeyError, UnicodeDecodeError):
            continue
    # Several passes with different groupings so merges see words in varied contexts.
    lines = []
    for stride in (7, 11, 13):
        for i in range(0, len(pieces), stride):
            lines.append("".join(pieces[i : i + stride]).strip())
    return lines


def make_tokenizer(shared, out_dir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 1,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(shared), trainer=trainer)
    if tok.get_vocab_size() != VOCAB - 1:
        sys.exit(f"tokenizer trained to {tok.get_vocab_size()} tokens, expected {VOCAB - 1}")
    tok.add_special_tokens(["<|endoftext|>"])
    assert tok.token_to_id("<|endoftext|>") == EOS
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>", model_max_length=64)
    fast.save_pretrained(out_dir)
    return fast


def base_config(**overrides):
    cfg = dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=EOS,
               eos_token_id=EOS, initializer_range=0.3, attn_implementation="eager")
    cfg.update(overrides)
    return GPT2Config(**cfg)


def presents(cache, n_layer):
    out = {}
    for i in range(n_layer):
        layer = cache.layers[i]
        out[f"present.{i}.key"] = layer.keys.detach().clone()
        out[f"present.{i}.value"] = layer.values.detach().clone()
    return out


def reference_outputs(model, tokenizer):
    n_layer = model.config.n_layer
    ref = {}
    with torch.no_grad():
        # (a) a prompt with an empty past
        ids = tokenizer("The quick brown fox jumps", return_tensors="pt")["input_ids"][:, :7]
        if ids.shape[1] < 7:
            ids = torch.cat([ids, torch.tensor([[11, 42, 300, 7, 77, 5, 901]])[:, : 7 - ids.shape[1]]], dim=1)
        mask = torch.ones_like(ids)
        pos = torch.arange(ids.shape[1])[None]
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        ref.update({"a.input_ids": ids, "a.attention_mask": mask, "a.position_ids": pos, "a.logits": out.logits})
        ref.update({f"a.{k}": v for k, v in presents(out.past_key_values, n_layer).items()})

        # (b) one more token, fed (a)'s cache
        nxt = torch.tensor([[int(out.logits[0, -1].argmax())]])
        mask_b = torch.ones(1, ids.shape[1] + 1, dtype=torch.long)
        pos_b = torch.tensor([[ids.shape[1]]])
        out_b = model(input_ids=nxt, attention_mask=mask_b, position_ids=pos_b,
                      past_key_values=out.past_key_values, use_cache=True)
        ref.update({"b.input_ids": nxt, "b.attention_mask": mask_b, "b.position_ids": pos_b, "b.logits": out_b.logits})
        ref.update({f"b.{k}": v for k, v in presents(out_b.past_key_values, n_layer).items()})

        # (c) a left-padded batch of two prompts
        long_ids = ids[0].tolist()
        short_ids = tokenizer("Hello world", return_tensors="pt")["input_ids"][0].tolist()[:4]
        short_ids = (short_ids + [3, 14, 15, 92])[:4]
        width = len(long_ids)
        batch = torch.tensor([long_ids, [EOS] * (width - 4) + short_ids])
        mask_c = torch.tensor([[1] * width, [0] * (width - 4) + [1] * 4])
        pos_c = (mask_c.cumsum(-1) - 1).masked_fill(mask_c == 0, 1)
        out_c = model(input_ids=batch, attention_mask=mask_c, position_ids=pos_c, use_cache=True)
        ref.update({"c.input_ids": batch, "c.attention_mask": mask_c, "c.position_ids": pos_c, "c.logits": out_c.logits})
        ref.update({f"c.{k}": v for k, v in presents(out_c.past_key_values, n_layer).items()})
    return {k: v.contiguous() for k, v in ref.items()}


def save_reference(path, ref, meta):
    # One metadata key: safetensors stores the metadata map in hash order, which would make
    # reruns differ byte-wise.
    save_file(ref, path, metadata={"provenance": json.dumps(meta, sort_keys=True)})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    args = p.parse_args()
    torch.use_deterministic_algorithms(True)
    versions = {"transformers": transformers.__version__, "torch": torch.__version__}
    tok_dir = os.path.join(HERE, "tokenizer")
    shutil.rmtree(tok_dir, ignore_errors=True)
    tokenizer = make_tokenizer(args.shared, tok_dir)

    specs = {
        "tiny-default": dict(seed=1, config={}),
        "tiny-inner-gelu": dict(seed=2, config=dict(n_inner=80, activation_function="gelu")),
        "tiny-scaled-attn": dict(seed=3, config=dict(n_layer=3, scale_attn_by_inverse_layer_idx=True,
                                                     reorder_and_upcast_attn=True)),
        "tiny-untied": dict(seed=4, config=dict(tie_word_embeddings=False)),
    }
    index = {"versions": versions, "fixtures": {}}
    models_by_name = {}
    for name, spec in specs.items():
        torch.manual_seed(spec["seed"])
        config = base_config(**spec["config"])
        model = GPT2LMHeadModel(config).eval()
        out_dir = os.path.join(HERE, name)
        shutil.rmtree(out_dir, ignore_errors=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        save_reference(os.path.join(out_dir, "reference.safetensors"), reference_outputs(model, tokenizer),
                       dict(versions, fixture=name, attn_implementation="eager"))
        models_by_name[name] = model
        index["fixtures"][name] = dict(spec["config"], seed=spec["seed"], reference="reference.safetensors")

    base = models_by_name["tiny-default"]
    for suffix, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        name = f"tiny-default-{suffix}"
        out_dir = os.path.join(HERE, name)
        shutil.rmtree(out_dir, ignore_errors=True)
        low = GPT2LMHeadModel(base.config).eval()
        low.load_state_dict(base.state_dict())
        low.to(dtype).save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        upcast = GPT2LMHeadModel.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager").eval()
        save_reference(os.path.join(out_dir, "reference.safetensors"), reference_outputs(upcast, tokenizer),
                       dict(versions, fixture=name, attn_implementation="eager", weights=str(dtype)))
        index["fixtures"][name] = dict(stored_as=str(dtype), reference="reference.safetensors")

    name = "tiny-default-sharded"
    out_dir = os.path.join(HERE, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    base.save_pretrained(out_dir, max_shard_size="60KB")
    tokenizer.save_pretrained(out_dir)
    index["fixtures"][name] = dict(same_weights_as="tiny-default", reference="../tiny-default/reference.safetensors")

    name = "tiny-base-noprefix"
    out_dir = os.path.join(HERE, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    base.transformer.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # GPT2Model writes no generation_config.json; record what transformers derives from its config.
    derived = GenerationConfig.from_model_config(base.transformer.config).to_diff_dict()
    derived.pop("transformers_version", None)
    with open(os.path.join(out_dir, "expected_generation_config.json"), "w") as f:
        json.dump(derived, f, indent=2, sort_keys=True)
    index["fixtures"][name] = dict(same_weights_as="tiny-default", saved_from="GPT2Model",
                                   reference="../tiny-default/reference.safetensors")

    with open(os.path.join(HERE, "fixtures.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
