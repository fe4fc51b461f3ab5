#!/usr/bin/env python3
"""Greedy generation with onnxruntime-genai over a gpt2c export folder (genai_config.json in it).

    python tests/clients/genai_generate.py EXPORT_DIR CASES_JSON

CASES_JSON: a JSON list of {"prompt": [ids], "max_length": n}. Prints a JSON list of the generated
sequences (prompt included), one per case, as token ids.
"""
import json
import sys

import onnxruntime_genai as og


def main():
    model = og.Model(sys.argv[1])
    out = []
    for case in json.load(open(sys.argv[2])):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=case["max_length"], do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(case["prompt"])
        while not generator.is_done():
            generator.generate_next_token()
        out.append([int(t) for t in generator.get_sequence(0)])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
