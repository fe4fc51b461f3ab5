// Greedy generation with @huggingface/transformers (transformers.js, onnxruntime-node) over a gpt2c
// export in the transformers.js layout, offline from a local folder.
//
//   node tests/clients/transformersjs_generate.mjs MODELS_DIR MODEL_NAME CASES_JSON [DTYPE]
//
// CASES_JSON: a JSON list of {"prompt": [ids], "max_new_tokens": n}. Prints a JSON list of the
// generated sequences (prompt included) as token ids.
import { readFileSync } from "node:fs";
import { env, AutoModelForCausalLM, Tensor } from "@huggingface/transformers";

env.allowRemoteModels = false;
env.localModelPath = process.argv[2];
const model = await AutoModelForCausalLM.from_pretrained(process.argv[3], { dtype: process.argv[5] ?? "fp32" });
const out = [];
for (const c of JSON.parse(readFileSync(process.argv[4], "utf8"))) {
  const ids = c.prompt;
  const input_ids = new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
  const attention_mask = new Tensor("int64", BigInt64Array.from(ids.map(() => 1n)), [1, ids.length]);
  const seq = await model.generate({ input_ids, attention_mask, max_new_tokens: c.max_new_tokens, do_sample: false });
  out.push(Array.from(seq.data, Number));
}
console.log(JSON.stringify(out));
