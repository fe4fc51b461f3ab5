"""The official OpenAI Python client against a `gpt2c serve` that asks for an API key (driven by
cli/tests/serve_hostile.rs).

usage: openai_auth.py BASE_URL MODEL GOOD_KEY BAD_KEY

Prints one JSON object: the text of a completion made with the good key, and what the client
raised with the bad one (its class, HTTP status and the error's code and type).
"""

import json
import sys

import openai
from openai import OpenAI


def main():
    base_url, model, good, bad = sys.argv[1:5]
    client = OpenAI(base_url=base_url, api_key=good, max_retries=0, timeout=60)
    whole = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, temperature=0)
    refused = None
    try:
        OpenAI(base_url=base_url, api_key=bad, max_retries=0, timeout=60).completions.create(
            model=model, prompt="Once upon a time", max_tokens=5
        )
    except openai.AuthenticationError as e:
        body = e.body if isinstance(e.body, dict) else {}
        refused = {"class": type(e).__name__, "status": e.status_code, "code": e.code, "type": body.get("type")}
    print(json.dumps({"text": whole.choices[0].text, "refused": refused}))


if __name__ == "__main__":
    main()
