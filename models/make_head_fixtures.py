#!/usr/bin/env python3
"""Makes the fixtures of every GPT-2 head and activation: small random checkpoints and transformers'
reference outputs (models/heads/<name>/: config.json, model.safetensors, reference.safetensors).

Run from the repository root (needs torch, transformers, safetensors):

    python models/make_head_fixtures.py

Deterministic (fixed seeds, CPU, fp32, eager attention); the versions used are recorded in each
reference file's metadata. Every checkpoint is saved by save_pretrained of its transformers class,
so weight names and config.json (architectures, id2label, summary_*) are transformers' own.

Heads (reference inputs are in the reference file next to the outputs):
  seq-cls             GPT2ForSequenceClassification, 3 labels, pad_token_id = 999: a batch of three rows,
                      unpadded, left-padded and right-padded (ids 999 where attention_mask is 0) → logits
  seq-cls-nopad       the same without pad_token_id: one row (transformers refuses larger batches)
  tok-cls             GPT2ForTokenClassification, 5 labels: a left-padded batch → logits
  qa                  GPT2ForQuestionAnswering: a left-padded batch → start_logits, end_logits
  double-heads        GPT2DoubleHeadsModel (summary_type cls_index, projection to 1 label):
                      input_ids/attention_mask [2, 3, 6], mc_token_ids [2, 3] → logits, mc_logits
  double-heads-mean   summary_type mean, summary_activation tanh, summary_proj_to_labels false
  double-heads-last   summary_type last
  base                GPT2Model: a left-padded batch → last_hidden_state (p.*), and a prompt with
                      position_ids (q.*) then one more token fed its past (r.*) → last_hidden_state, present.*
Activations (act-<name>, GPT2LMHeadModel, 1 layer): a 6-token prompt → logits, for every
activation_function transformers' ACT2FN offers that GPT-2 can use.
Config variants (variants/, GPT2LMHeadModel): scale_attn_weights false, layer_norm_epsilon 1e-3 and
n_positions 2048, run at positions 1500..1505 → logits.
Cross-attention (cross/, GPT2LMHeadModel with add_cross_attention, the decoder of encoder-decoder
models): x.* a left-padded batch of two prompts with encoder_hidden_states [2, 4, 32] and an
encoder_attention_mask masking one state → logits, present.{i}.key/value (self) and
present.{i}.encoder.key/value (cross); y.* one more token fed x's cache → the same names.
PyTorch pickles: tiny-bin/ is models/tiny-default saved with safe_serialization=False
(pytorch_model.bin); evil-bin/ is a pytorch_model.bin whose pickle calls os.system to create
/tmp/gpt2c-unpickler-canary (it must be refused without running anything).
Initialisation (random-init/): config.json of a 4-layer model and init-stats.json, the per-tensor
mean, standard deviation and size of transformers' fresh GPT2LMHeadModel and
GPT2ForSequenceClassification of that config (what `--random-init` must reproduce statistically).
"""
import json
import os
import pickle
import shutil
import zipfile

import torch
import transformers
from safetensors.torch import save_file
from transformers import (GPT2Config, GPT2DoubleHeadsModel, GPT2ForQuestionAnswering, GPT2ForSequenceClassification,
                          GPT2ForTokenClassification, GPT2LMHeadModel, GPT2Model)

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "heads")
VOCAB, EOS = 1000, 999
ACTIVATIONS = ["gelu_new", "gelu_pytorch_tanh", "gelu_accurate", "gelu", "gelu_python", "gelu_fast", "gelu_10",
               "quick_gelu", "relu", "relu2", "relu6", "silu", "swish", "tanh", "sigmoid", "leaky_relu", "mish",
               "linear"]


def config(**overrides):
    cfg = dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=EOS, eos_token_id=EOS,
               initializer_range=0.3, attn_implementation="eager")
    cfg.update(overrides)
    return GPT2Config(**cfg)


def presents(cache, n_layer, prefix):
    return {f"{prefix}.present.{i}.{kind}": getattr(cache.layers[i], kind + "s").detach().clone()
            for i in range(n_layer) for kind in ("key", "value")}


def left_padded(rows, width):
    ids = torch.full((len(rows), width), EOS, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    return ids, mask


def save(name, model, ref):
    out = os.path.join(HERE, name)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "fixture": name,
            "class": type(model).__name__}
    ref = {k: v.contiguous() for k, v in ref.items()}
    save_file(ref, os.path.join(out, "reference.safetensors"), metadata={"provenance": json.dumps(meta, sort_keys=True)})


def main():
    torch.use_deterministic_algorithms(True)
    prompts = [[11, 42, 300, 7, 77, 5], [3, 14, 15, 92], [500, 21]]
    with torch.no_grad():
        torch.manual_seed(10)
        m = GPT2ForSequenceClassification(config(num_labels=3, pad_token_id=EOS)).eval()
        ids = torch.tensor([[11, 42, 300, 7, 77, 5], [EOS, EOS, 3, 14, 15, 92], [500, 21, 8, 9, EOS, EOS]])
        mask = (ids != EOS).long()
        save("seq-cls", m, {"input_ids": ids, "attention_mask": mask, "logits": m(input_ids=ids, attention_mask=mask).logits})

        torch.manual_seed(11)
        m = GPT2ForSequenceClassification(config(num_labels=3)).eval()
        ids = torch.tensor([[11, 42, 300, 7, 77, 5]])
        mask = torch.ones_like(ids)
        save("seq-cls-nopad", m, {"input_ids": ids, "attention_mask": mask, "logits": m(input_ids=ids, attention_mask=mask).logits})

        torch.manual_seed(12)
        m = GPT2ForTokenClassification(config(num_labels=5)).eval()
        ids, mask = left_padded(prompts, 6)
        save("tok-cls", m, {"input_ids": ids, "attention_mask": mask, "logits": m(input_ids=ids, attention_mask=mask).logits})

        torch.manual_seed(13)
        m = GPT2ForQuestionAnswering(config()).eval()
        ids, mask = left_padded(prompts, 6)
        out = m(input_ids=ids, attention_mask=mask)
        save("qa", m, {"input_ids": ids, "attention_mask": mask, "start_logits": out.start_logits, "end_logits": out.end_logits})

        for seed, (name, extra) in enumerate([
            ("double-heads", {}),
            ("double-heads-mean", dict(summary_type="mean", summary_activation="tanh", summary_proj_to_labels=False)),
            ("double-heads-last", dict(summary_type="last")),
        ]):
            torch.manual_seed(20 + seed)
            m = GPT2DoubleHeadsModel(config(**extra)).eval()
            g = torch.Generator().manual_seed(5)
            ids = torch.randint(0, EOS, (2, 3, 6), generator=g)
            mask = torch.ones_like(ids)
            mask[1, 2, :2] = 0  # one left-padded choice
            mc = torch.tensor([[5, 3, 0], [2, 5, 4]])
            out = m(input_ids=ids, attention_mask=mask, mc_token_ids=mc)
            save(name, m, {"input_ids": ids, "attention_mask": mask, "mc_token_ids": mc, "logits": out.logits,
                           "mc_logits": out.mc_logits})

        torch.manual_seed(30)
        m = GPT2Model(config()).eval()
        ref = {}
        ids, mask = left_padded(prompts, 6)
        ref.update({"p.input_ids": ids, "p.attention_mask": mask,
                    "p.last_hidden_state": m(input_ids=ids, attention_mask=mask).last_hidden_state})
        ids = torch.tensor([prompts[0]])
        mask, pos = torch.ones_like(ids), torch.arange(6)[None]
        out = m(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        ref.update({"q.input_ids": ids, "q.attention_mask": mask, "q.position_ids": pos,
                    "q.last_hidden_state": out.last_hidden_state})
        ref.update(presents(out.past_key_values, 2, "q"))
        nxt, mask_r, pos_r = torch.tensor([[123]]), torch.ones(1, 7, dtype=torch.long), torch.tensor([[6]])
        out_r = m(input_ids=nxt, attention_mask=mask_r, position_ids=pos_r, past_key_values=out.past_key_values, use_cache=True)
        ref.update({"r.input_ids": nxt, "r.attention_mask": mask_r, "r.position_ids": pos_r,
                    "r.last_hidden_state": out_r.last_hidden_state})
        ref.update(presents(out_r.past_key_values, 2, "r"))
        save("base", m, ref)

        torch.manual_seed(41)
        m = GPT2LMHeadModel(config(scale_attn_weights=False, layer_norm_epsilon=1e-3, n_positions=2048)).eval()
        ids = torch.tensor([prompts[0]])
        mask, pos = torch.ones_like(ids), torch.arange(1500, 1506)[None]
        save("variants", m, {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                             "logits": m(input_ids=ids, attention_mask=mask, position_ids=pos).logits})

        torch.manual_seed(40)
        m = GPT2LMHeadModel(config(add_cross_attention=True)).eval()
        g = torch.Generator().manual_seed(6)
        enc = torch.randn(2, 4, 32, generator=g)
        enc_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
        ids, mask = left_padded(prompts[:2], 6)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = m(input_ids=ids, attention_mask=mask, position_ids=pos, encoder_hidden_states=enc,
                encoder_attention_mask=enc_mask, use_cache=True)
        ref = {"x.input_ids": ids, "x.attention_mask": mask, "x.position_ids": pos, "x.encoder_hidden_states": enc,
               "x.encoder_attention_mask": enc_mask, "x.logits": out.logits}
        cache = out.past_key_values
        ref.update(presents(cache.self_attention_cache, 2, "x"))
        for i in range(2):
            ref[f"x.present.{i}.encoder.key"] = cache.cross_attention_cache.layers[i].keys.clone()
            ref[f"x.present.{i}.encoder.value"] = cache.cross_attention_cache.layers[i].values.clone()
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask_y = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        pos_y = pos[:, -1:] + 1
        out_y = m(input_ids=nxt, attention_mask=mask_y, position_ids=pos_y, encoder_hidden_states=enc,
                  encoder_attention_mask=enc_mask, past_key_values=cache, use_cache=True)
        ref.update({"y.input_ids": nxt, "y.attention_mask": mask_y, "y.position_ids": pos_y, "y.logits": out_y.logits,
                    "y.encoder_attention_mask": enc_mask.clone()})
        ref.update(presents(out_y.past_key_values.self_attention_cache, 2, "y"))
        for i in range(2):
            ref[f"y.present.{i}.encoder.key"] = out_y.past_key_values.cross_attention_cache.layers[i].keys.clone()
            ref[f"y.present.{i}.encoder.value"] = out_y.past_key_values.cross_attention_cache.layers[i].values.clone()
        save("cross", m, ref)

        out = os.path.join(HERE, "tiny-bin")
        shutil.rmtree(out, ignore_errors=True)
        GPT2LMHeadModel.from_pretrained(os.path.join(HERE, "..", "tiny-default")).save_pretrained(out, safe_serialization=False)
        out = os.path.join(HERE, "evil-bin")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        shutil.copy(os.path.join(HERE, "..", "tiny-default", "config.json"), out)

        class Evil:
            def __reduce__(self):
                return (os.system, ("touch /tmp/gpt2c-unpickler-canary",))

        with zipfile.ZipFile(os.path.join(out, "pytorch_model.bin"), "w", zipfile.ZIP_STORED) as z:
            stamp = (2020, 1, 1, 0, 0, 0)  # fixed, so reruns write the same bytes
            z.writestr(zipfile.ZipInfo("archive/data.pkl", stamp), pickle.dumps({"transformer.wte.weight": Evil()}, protocol=2))
            z.writestr(zipfile.ZipInfo("archive/version", stamp), "3\n")

        out = os.path.join(HERE, "random-init")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        cfg = config(n_embd=64, n_layer=4, n_positions=128, initializer_range=0.02, num_labels=3, pad_token_id=EOS)
        cfg.architectures = ["GPT2LMHeadModel"]
        cfg.to_json_file(os.path.join(out, "config.json"))
        stats = {"transformers": transformers.__version__, "torch": torch.__version__, "models": {}}
        for cls in (GPT2LMHeadModel, GPT2ForSequenceClassification):
            torch.manual_seed(0)
            model = cls(cfg)
            stats["models"][cls.__name__] = {
                name.removeprefix("transformer."): {"mean": p.double().mean().item(), "std": p.double().std(unbiased=False).item(),
                                                    "numel": p.numel()}
                for name, p in model.named_parameters()}
        with open(os.path.join(out, "init-stats.json"), "w") as f:
            json.dump(stats, f, indent=1, sort_keys=True)

        for i, act in enumerate(ACTIVATIONS):
            torch.manual_seed(100 + i)
            m = GPT2LMHeadModel(config(activation_function=act, n_layer=1, n_embd=16, n_head=2)).eval()
            ids = torch.tensor([prompts[0]])
            mask, pos = torch.ones_like(ids), torch.arange(6)[None]
            out = m(input_ids=ids, attention_mask=mask, position_ids=pos)
            save(f"act-{act}", m, {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "logits": out.logits})


if __name__ == "__main__":
    main()
