"""The official OpenAI Python client against `gpt2c serve` (driven by cli/tests/serve.rs).

usage: openai_completions.py BASE_URL MODEL PROMPT MAX_TOKENS

Prints one JSON object: the non-streamed completion (text, finish reason, usage) and the
streamed one (its pieces, the finish reason of the last chunk, the usage chunk).
"""

import json
import sys

from openai import OpenAI


def main():
    base_url, model, prompt, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
    pieces, finish, usage = [], None, None
    stream = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            pieces.append(choice.text)
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    print(
        json.dumps(
            {
                "text": whole.choices[0].text,
                "finish_reason": whole.choices[0].finish_reason,
                "usage": whole.usage.model_dump(),
                "object": whole.object,
                "pieces": pieces,
                "stream_finish_reason": finish,
                "stream_usage": usage,
            }
        )
    )


if __name__ == "__main__":
    main()
