#!/bin/bash
# The CUDA execution provider checks for a GPU machine: parity with the CPU provider (perplexity of a
# trained model's held-out text, greedy token ids; fp32 and fp16 exports) and decode speed (gpt2-small
# shape, 128-token prompt, 64 new tokens; fp32, fp16 and --kv-cache shared; batch 1 and 8).
#
# Prepare here (x86-64), then copy the folder G to the GPU machine and run this script there:
#   G=/tmp/g; mkdir -p $G
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       -d /tmp/whl onnxruntime-gpu==1.31.1        # CUDA 13 build; needs CUDA 13 and cuDNN 9 there
#   (cd /tmp/whl && unzip -o -q onnxruntime_gpu-*.whl 'onnxruntime/capi/libonnxruntime*' &&
#    cd onnxruntime/capi && tar cf - libonnxruntime.so.1.31.1 libonnxruntime_providers_cuda.so \
#       libonnxruntime_providers_shared.so | xz -9 -T2 > $G/ortgpu.tar.xz)
#   cargo build --release -p gpt2c && strip -o $G/gpt2c target/release/gpt2c
#   (cd ../shared/models && tar cf - vim-small | xz -9 > $G/vim-small.tar.xz)
#   python tests/bench/make_random_checkpoint.py gpt2-small /tmp/ckpt && cp /tmp/ckpt/config.json $G/small-config.json
# The libraries are ~190 MB compressed; split them (`split -b 38700000 -d ortgpu.tar.xz ortgpu.tar.xz.part`)
# when the transfer to the GPU machine is limited in size. The CUDA and cuDNN libraries are taken from the
# Python packages there (PyTorch's nvidia-* wheels). Results go to $OUT (default /tmp/out).
set -x
G=/tmp/g
cd $G || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
[ -f ortgpu.tar.xz ] || cat ortgpu.tar.xz.part* > ortgpu.tar.xz
mkdir -p ort && tar xJf ortgpu.tar.xz -C ort
[ -x gpt2c ] || { xz -d -c gpt2c.xz > gpt2c && chmod +x gpt2c; }
mkdir -p "${OUT:=/tmp/out}"
[ -d vim-small ] || tar xJf vim-small.tar.xz
LIBS=$(find / -xdev -type d -path '*site-packages/nvidia*' -name lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH=$G/ort:$LIBS
export ORT_DYLIB_PATH=$G/ort/libonnxruntime.so.1.31.1
ls -la ort
B=$G/gpt2c
$B export vim-small -o vim -q --force
$B export vim-small -o vim16 --dtype fp16 -q --force
$B export --config small-config.json --random-init --seed 1 -o small -q --force
$B export --config small-config.json --random-init --seed 1 -o small16 --dtype fp16 -q --force
$B export --config small-config.json --random-init --seed 1 -o smalls --target ort --kv-cache shared -q --force
# Parity: perplexity of the trained model's held-out text, and greedy ids, CPU vs CUDA.
for e in vim vim16; do
  for ep in cpu cuda; do
    timeout 120 $B perplexity $e --text vim-small/heldout.txt --limit-tokens 8192 --ep $ep --ep-strict --json \
      > $OUT/ppl-$e-$ep.json 2> $OUT/ppl-$e-$ep.err
    tail -c 400 $OUT/ppl-$e-$ep.json; tail -3 $OUT/ppl-$e-$ep.err
  done
done
for e in vim vim16; do
  for ep in cpu cuda; do
    timeout 60 $B generate $e -p "The" -p ":help" -p "To insert text" --max-new-tokens 48 --ep $ep --ep-strict --json -q \
      > $OUT/gen-$e-$ep.json 2> $OUT/gen-$e-$ep.err
    tail -2 $OUT/gen-$e-$ep.err
  done
done
python3 - <<'PY'
import json, os
out = os.environ.get("OUT", "/tmp/out")
def load(n):
    try: return json.load(open(f"{out}/{n}"))
    except Exception as e: return {"error": str(e)}
for e in ("vim", "vim16"):
    a, b = load(f"gen-{e}-cpu.json"), load(f"gen-{e}-cuda.json")
    ids = lambda d: [s.get("token_ids") or s.get("ids") for s in d.get("sequences", [])]
    print(e, "greedy ids equal CPU vs CUDA:", ids(a) == ids(b) and bool(ids(a)), len(ids(a)), len(ids(b)))
    pa, pb = load(f"ppl-{e}-cpu.json"), load(f"ppl-{e}-cuda.json")
    print(e, "perplexity CPU", pa.get("perplexity"), "CUDA", pb.get("perplexity"))
PY
# Speed: gpt2-small shape, 128-token prompt, 64 new tokens.
for e in small small16 smalls; do
  for b in 1 8; do
    timeout 120 $B bench $e --ep cuda --ep-strict --batch $b --prompt-tokens 128 --new-tokens 64 --repeat 3 --json \
      > $OUT/bench-$e-cuda-b$b.json 2> $OUT/bench-$e-cuda-b$b.err
    tail -c 600 $OUT/bench-$e-cuda-b$b.json; tail -2 $OUT/bench-$e-cuda-b$b.err
  done
done
timeout 120 $B bench small --ep cpu --threads 16 --prompt-tokens 128 --new-tokens 64 --repeat 3 --json > $OUT/bench-small-cpu16.json 2>&1
tail -c 600 $OUT/bench-small-cpu16.json
nvidia-smi --query-gpu=name,memory.used --format=csv
