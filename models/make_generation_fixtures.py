#!/usr/bin/env python3
"""Records transformers' generate() token ids for gpt2c's generation tests.

    .venv/bin/python models/make_generation_fixtures.py [--shared ../shared] [--transformers-4-56 DIR]

Writes models/generation/<model>.json: one entry per case with the prompts (token ids, unpadded), the
generate() keyword arguments, and the returned `sequences` (padded prompt + new tokens, as generate()
returns them) plus `sequences_scores` for beam methods. Deterministic cases only (greedy and beam
search); sampling cannot reproduce torch's RNG and is tested statistically instead.

Models:
  tiny-default   models/tiny-default (random weights, 1,000-token BPE): every processor and strategy.
  tiny-trained   ../shared/models/tiny-trained (trained on English prose, real GPT-2 vocabulary):
                 meaningful prompts for greedy, beam search and a padded batch; tiny-trained-long.json:
                 prompts near 64 positions that grow past it (--long-only writes just that file).
  prompt-lookup.json: greedy search with prompt lookup decoding (prompt_lookup_num_tokens,
                 max_matching_ngram_size) on tiny-trained and tiny-default, prompts whose continuation
                 copies from them; each case also checks that plain greedy gives the same ids (--lookup-only).
  search.json:   cases for ONNX Runtime's in-graph search operators (--search-only): a prompt holding the
                 pad token read three ways, and beam search where no hypothesis ends early.

Group (diverse) beam search left the library in transformers 4.57, so its cases are produced by running
this script again under transformers 4.56 (--group-beam-only), with that version on PYTHONPATH:
    pip install --no-deps --target /tmp/tf456 transformers==4.56.2
    .venv/bin/python models/make_generation_fixtures.py --transformers-4-56 /tmp/tf456
Each case records the transformers version that produced it.
Attention is eager and fp32; batches are left-padded with pad = eos and position_ids = cumsum(mask) - 1.
"""
import argparse
import json
import os
import subprocess
import sys

import torch
import transformers
from transformers import AutoTokenizer, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))


def load(path):
    model = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok


def pad_left(prompts, pad_id):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def run_case(model, name, prompts, **kwargs):
    eos = model.generation_config.eos_token_id
    pad = kwargs.get("pad_token_id", eos if isinstance(eos, int) else eos[0])
    ids, mask = pad_left(prompts, pad)
    kwargs.setdefault("pad_token_id", pad)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True,
                             **kwargs)
    case = {"name": name, "prompts": prompts, "kwargs": kwargs, "sequences": out.sequences.tolist(),
            "transformers": transformers.__version__}
    if getattr(out, "sequences_scores", None) is not None:
        case["sequences_scores"] = out.sequences_scores.tolist()
    return case


def greedy_tokens(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=model.generation_config.eos_token_id)
    return out[0, len(prompt):].tolist()


def tiny_default_cases(model, tok):
    p = tok("The quick brown fox")["input_ids"]
    p2 = tok("Hello world, this is")["input_ids"]
    p3 = tok("A")["input_ids"]
    plain = greedy_tokens(model, p, 30)
    baselines = {}

    def changes(case):
        """Asserts a processor case differs from plain greedy of the same length: otherwise it proves nothing."""
        n = len(case["sequences"][0]) - len(p)
        base = baselines.setdefault(n, [p + greedy_tokens(model, p, n)])
        assert case["sequences"] != base, f"{case['name']} does not change greedy's output"
        return case

    cases = [run_case(model, "greedy", [p], max_new_tokens=16, do_sample=False)]
    cases.append(run_case(model, "greedy_default_length", [p], do_sample=False))
    # Beams finish at different lengths only when EOS is reachable: use a token this model often picks.
    beam_eos = plain[1]
    beams = []
    for lp in (0.5, 1.0, 2.0):
        for es in (True, False, "never"):
            beams.append(run_case(model, f"beam_lp{lp}_es{es}", [p], max_new_tokens=10, num_beams=4, length_penalty=lp,
                                  early_stopping=es, num_return_sequences=2, eos_token_id=beam_eos, do_sample=False))
    distinct = len({json.dumps(c["sequences"]) for c in beams})
    assert distinct >= 4, f"beam cases are not discriminating ({distinct} distinct outputs)"
    cases += beams
    cases.append(changes(run_case(model, "repetition_penalty", [p], max_new_tokens=16, repetition_penalty=1.3,
                                  do_sample=False)))
    cases.append(changes(run_case(model, "no_repeat_ngram", [p], max_new_tokens=30, no_repeat_ngram_size=2,
                                  do_sample=False)))
    # Make EOS a token greedy picks at step 2, then require more tokens first.
    cases.append(run_case(model, "eos_stops", [p], max_new_tokens=12, eos_token_id=plain[2], do_sample=False))
    assert len(cases[-1]["sequences"][0]) == len(p) + 3
    cases.append(run_case(model, "min_new_tokens", [p], max_new_tokens=12, eos_token_id=plain[2], min_new_tokens=6,
                          do_sample=False))
    cases.append(run_case(model, "min_length", [p], max_new_tokens=12, eos_token_id=plain[2],
                          min_length=len(p) + 5, do_sample=False))
    for c in cases[-2:]:
        assert len(c["sequences"][0]) > len(p) + 3, c["name"]
    cases.append(changes(run_case(model, "bad_words", [p], max_new_tokens=16,
                                  bad_words_ids=[[plain[0]], [plain[3]], [plain[5], plain[6]]], do_sample=False)))
    cases.append(run_case(model, "batch_of_three", [p, p2, p3], max_new_tokens=12, do_sample=False))
    cases.append(run_case(model, "batch_beam", [p, p3], max_new_tokens=8, num_beams=3, num_return_sequences=2,
                          eos_token_id=beam_eos, do_sample=False))
    cases.append(changes(run_case(model, "forced_eos", [p], max_new_tokens=6,
                                  forced_eos_token_id=model.config.eos_token_id, do_sample=False)))
    cases.append(changes(run_case(model, "suppress_tokens", [p], max_new_tokens=12, suppress_tokens=plain[:4],
                                  do_sample=False)))
    cases.append(changes(run_case(model, "begin_suppress_tokens", [p], max_new_tokens=8,
                                  begin_suppress_tokens=plain[:1], do_sample=False)))
    cases.append(changes(run_case(model, "sequence_bias", [p], max_new_tokens=12,
                                  sequence_bias=[[[plain[1]], -20.0], [[plain[4], plain[5]], -30.0],
                                                 [[tok.eos_token_id], 5.0]], do_sample=False)))
    cases.append(changes(run_case(model, "exponential_decay", [p], max_new_tokens=12,
                                  exponential_decay_length_penalty=(2, 3.0), do_sample=False)))
    cases.append(run_case(model, "several_eos", [p], max_new_tokens=12, eos_token_id=[plain[5], plain[3]],
                          do_sample=False))
    assert len(cases[-1]["sequences"][0]) == len(p) + 4
    cases.append(run_case(model, "beam_several_eos", [p], max_new_tokens=8, num_beams=3,
                          eos_token_id=[plain[5], plain[3]], do_sample=False))
    cases.append(run_case(model, "renormalize_beam", [p], max_new_tokens=8, num_beams=3, renormalize_logits=True,
                          repetition_penalty=1.5, eos_token_id=beam_eos, do_sample=False))
    cases.append(run_case(model, "beam_repetition_ngram", [p], max_new_tokens=10, num_beams=4, repetition_penalty=1.3,
                          no_repeat_ngram_size=2, eos_token_id=beam_eos, do_sample=False))
    text = tok.decode(plain[:6])
    stop = text[len(tok.decode(plain[:4])):]
    assert stop.strip(), "pick a stop string with visible characters"
    cases.append(run_case(model, "stop_strings", [p], max_new_tokens=12, stop_strings=[stop[-2:]], tokenizer=tok,
                          do_sample=False))
    cases[-1]["kwargs"].pop("tokenizer")
    assert len(cases[-1]["sequences"][0]) < len(p) + 12, "the stop string ends generation early"
    return cases


def tiny_trained_cases(model, tok):
    prompts = [tok(t)["input_ids"] for t in ("The software is distributed", "You can", "In the editor, press the key to")]
    return [
        run_case(model, "greedy", prompts[:1], max_new_tokens=24, do_sample=False),
        run_case(model, "beam", prompts[:1], max_new_tokens=16, num_beams=4, num_return_sequences=2, do_sample=False),
        run_case(model, "batch_of_three", prompts, max_new_tokens=16, do_sample=False),
        run_case(model, "no_repeat_ngram", prompts[2:], max_new_tokens=24, no_repeat_ngram_size=3,
                 repetition_penalty=1.2, do_sample=False),
    ]


def tiny_trained_long_cases(model, tok):
    """Prompts near and past 64 positions that grow by 40 or more: caches kept in a buffer with room
    for more positions (`--kv-cache shared`, 64 positions at first) must move to a larger one."""
    text = ("The relationship could be a matter of historical connection with the subject or with related "
            "matters, or of legal, commercial, philosophical, ethical or political position regarding them. "
            "The Invariant Sections are certain Secondary Sections whose titles are designated, as being those of "
            "Invariant Sections, in the notice that says that the Document is released under this License.")
    long = tok(text)["input_ids"][:52]
    short = tok("You can")["input_ids"]
    assert len(long) == 52, len(long)
    return [
        run_case(model, "long_greedy", [long], max_new_tokens=40, do_sample=False),
        run_case(model, "long_beam", [long], max_new_tokens=20, num_beams=3, num_return_sequences=2,
                 do_sample=False),
        run_case(model, "long_and_short", [long, short], max_new_tokens=30, do_sample=False),
    ]


def lookup_cases(trained, trained_tok, tiny, tiny_tok):
    """Prompt lookup decoding. `sequences` are plain greedy's, which gpt2c must give; transformers' own
    prompt lookup output (`lookup_sequences`) starts with them but can run one token past max_new_tokens
    (its drafts are not capped by the length left: copy_trigram shows it), which gpt2c never does."""
    passage = ("The relationship could be a matter of historical connection with the subject or with related "
               "matters, or of legal, commercial, philosophical, ethical or political position regarding them. "
               "The Invariant Sections are certain Secondary Sections whose titles are designated. "
               "The relationship could be")
    copy = trained_tok(passage)["input_ids"]
    fox = tiny_tok("The quick brown fox jumps over the lazy dog. The quick brown")["input_ids"]
    cases = [
        (trained, "copy_passage", [copy], dict(max_new_tokens=40, prompt_lookup_num_tokens=10)),
        (trained, "copy_trigram", [copy], dict(max_new_tokens=30, prompt_lookup_num_tokens=4,
                                                max_matching_ngram_size=3)),
        (trained, "copy_with_penalty", [copy], dict(max_new_tokens=30, prompt_lookup_num_tokens=6,
                                                     repetition_penalty=1.3)),
        (trained, "short_prompt", [trained_tok("You can")["input_ids"]], dict(max_new_tokens=30,
                                                                              prompt_lookup_num_tokens=5)),
        (trained, "room_for_fewer_drafts", [copy], dict(max_new_tokens=3, prompt_lookup_num_tokens=10)),
        (tiny, "tiny_default_copy", [fox], dict(max_new_tokens=24, prompt_lookup_num_tokens=5,
                                                max_matching_ngram_size=1)),
    ]
    out = []
    for model, name, prompts, kwargs in cases:
        lookup = run_case(model, name, prompts, do_sample=False, **kwargs)
        plain = {k: v for k, v in lookup["kwargs"].items()
                 if k not in ("prompt_lookup_num_tokens", "max_matching_ngram_size")}
        case = run_case(model, name, prompts, **plain)
        case["kwargs"] = lookup["kwargs"]
        case["lookup_sequences"] = lookup["sequences"]
        width = len(case["sequences"][0])
        assert lookup["sequences"][0][:width] == case["sequences"][0], name
        out.append(case)
    return out


def greedy_with_positions(model, prompt, mask, positions, new_tokens):
    """Greedy decoding with explicit position ids (generate() derives them from the mask)."""
    ids, mask, pos = torch.tensor([prompt]), torch.tensor([mask]), torch.tensor([positions])
    out, past = list(prompt), None
    with torch.no_grad():
        for _ in range(new_tokens):
            step = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
            token = int(step.logits[0, -1].argmax())
            out.append(token)
            past = step.past_key_values
            ids = torch.tensor([[token]])
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            pos = pos[:, -1:] + 1
    return out


def search_cases(model):
    """Cases for ONNX Runtime's in-graph search operators (tiny-default, whose pad is its EOS, 999).

    A prompt holding the pad token, greedy, 10 new tokens: transformers attending to it with positions
    0, 1, 2, … (its default, all-ones mask); transformers with it masked; and what the operators compute
    when given the all-ones mask: they attend to it but number positions as if it were absent (every pad
    token gets position 0 and is skipped when counting), reproduced here with explicit position ids.
    Beam search with 4 beams × length_penalty {0.5, 1, 2} × early_stopping {true, false}, 2 sequences,
    with the rare default EOS: no hypothesis ends early, so the operators' length normalisation (which
    counts the prompt) ranks hypotheses as transformers' does."""
    prompt = [51, 491, 571, 999, 618, 286, 501]
    cases = []
    for name, mask in (("pad_in_prompt_attended", [1] * len(prompt)),
                       ("pad_in_prompt_masked", [0 if t == 999 else 1 for t in prompt])):
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.tensor([mask]),
                                 max_new_tokens=10, do_sample=False, pad_token_id=999)
        cases.append({"name": name, "prompts": [prompt], "attention_mask": [mask],
                      "kwargs": {"max_new_tokens": 10, "do_sample": False, "pad_token_id": 999},
                      "sequences": out.tolist(), "transformers": transformers.__version__})
    positions, count = [], 0
    for t in prompt:
        positions.append(0 if t == 999 else count)
        count += t != 999
    ort = greedy_with_positions(model, prompt, [1] * len(prompt), positions, 10)
    cases.append({"name": "pad_in_prompt_operator_positions", "prompts": [prompt], "position_ids": [positions],
                  "kwargs": {"max_new_tokens": 10, "do_sample": False, "pad_token_id": 999},
                  "sequences": [ort], "transformers": transformers.__version__})
    assert len({json.dumps(c["sequences"]) for c in cases}) == 3, "the three readings of the prompt differ"
    beam_prompt = [51, 491, 571, 618, 286, 501, 77, 282, 916]
    for lp in (0.5, 1.0, 2.0):
        for es in (True, False):
            case = run_case(model, f"beam4_lp{lp}_es{es}", [beam_prompt], max_new_tokens=10, num_beams=4,
                            num_return_sequences=2, length_penalty=lp, early_stopping=es, do_sample=False,
                            pad_token_id=999)
            assert all(999 not in s[len(beam_prompt):] for s in case["sequences"]), "no hypothesis ends early"
            cases.append(case)
    return cases


def group_beam_cases(model, tok):
    p = tok("The quick brown fox")["input_ids"]
    p3 = tok("A")["input_ids"]
    beam_eos = greedy_tokens(model, p, 2)[1]
    cases = [
        run_case(model, "group_beam", [p], max_new_tokens=10, num_beams=4, num_beam_groups=2, diversity_penalty=1.0,
                 num_return_sequences=4, eos_token_id=beam_eos, do_sample=False),
        run_case(model, "group_beam_batch", [p, p3], max_new_tokens=8, num_beams=4, num_beam_groups=2,
                 diversity_penalty=1.0, num_return_sequences=2, length_penalty=0.5, eos_token_id=beam_eos,
                 do_sample=False),
        run_case(model, "group_beam_three_groups", [p], max_new_tokens=8, num_beams=6, num_beam_groups=3,
                 diversity_penalty=2.0, num_return_sequences=3, early_stopping=True, eos_token_id=beam_eos,
                 do_sample=False),
    ]
    plain = run_case(model, "plain", [p], max_new_tokens=10, num_beams=4, num_return_sequences=4,
                     eos_token_id=beam_eos, do_sample=False)
    assert cases[0]["sequences"] != plain["sequences"], "diversity_penalty changes the beams"
    return cases


def save(path, cases):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for c in cases:
        c["kwargs"].pop("trust_remote_code", None)
        if isinstance(c["kwargs"].get("exponential_decay_length_penalty"), tuple):
            c["kwargs"]["exponential_decay_length_penalty"] = list(c["kwargs"]["exponential_decay_length_penalty"])
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f, indent=1)
        f.write("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    p.add_argument("--transformers-4-56", help="folder with transformers 4.56 installed (for group beam search)")
    p.add_argument("--group-beam-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--long-only", action="store_true",
                   help="write only generation/tiny-trained-long.json (leaves the other fixtures as they are)")
    p.add_argument("--search-only", action="store_true",
                   help="write only generation/search.json")
    p.add_argument("--lookup-only", action="store_true",
                   help="write only generation/prompt-lookup.json")
    args = p.parse_args()
    torch.use_deterministic_algorithms(True)
    out_dir = os.path.join(HERE, "generation")
    if args.group_beam_only:
        assert transformers.__version__.startswith("4.56"), transformers.__version__
        model, tok = load(os.path.join(HERE, "tiny-default"))
        save(os.path.join(out_dir, "tiny-default-group-beam.json"), group_beam_cases(model, tok))
        return
    if args.search_only:
        model, _ = load(os.path.join(HERE, "tiny-default"))
        save(os.path.join(out_dir, "search.json"), search_cases(model))
        return
    trained, trained_tok = load(os.path.join(args.shared, "models", "tiny-trained"))
    model, tok = load(os.path.join(HERE, "tiny-default"))
    save(os.path.join(out_dir, "prompt-lookup.json"), lookup_cases(trained, trained_tok, model, tok))
    if args.lookup_only:
        return
    save(os.path.join(out_dir, "tiny-trained-long.json"), tiny_trained_long_cases(trained, trained_tok))
    if args.long_only:
        return
    save(os.path.join(out_dir, "tiny-default.json"), tiny_default_cases(model, tok))
    save(os.path.join(out_dir, "search.json"), search_cases(model))
    save(os.path.join(out_dir, "tiny-trained.json"), tiny_trained_cases(trained, trained_tok))
    if args.transformers_4_56:
        env = dict(os.environ, PYTHONPATH=args.transformers_4_56)
        subprocess.run([sys.executable, __file__, "--group-beam-only"], env=env, check=True)


if __name__ == "__main__":
    main()
