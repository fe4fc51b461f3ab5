#!/usr/bin/env python3
"""Export time and peak memory: `gpt2c export` next to `optimum-cli export onnx`, in one run.

    python tests/bench/export_vs_optimum.py CHECKPOINT [--gpt2c target/release/gpt2c] [--work /tmp/export-bench]
        [--peers ../shared/bench/peers.py] [--repeat 3]

gpt2c runs --repeat times (fresh output folder each time; the best and the median are reported);
optimum runs once through the team's peers.py (`--only optimum-export`), which prints its own time and
peak RSS. Peak memory is the child's maximum resident set size (wait4's ru_maxrss), as peers.py
measures it. One JSON object per line.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time


def run_measured(cmd):
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed:\n{err[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--gpt2c", default=os.path.join(here, "../../target/release/gpt2c"))
    p.add_argument("--work", default="/tmp/export-bench")
    p.add_argument("--peers", default=os.path.join(here, "../../../shared/bench/peers.py"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-optimum", action="store_true")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    size = sum(os.path.getsize(os.path.join(args.checkpoint, f)) for f in os.listdir(args.checkpoint)
               if f.endswith(".safetensors"))
    runs = []
    for i in range(args.repeat):
        out = os.path.join(args.work, "gpt2c")
        shutil.rmtree(out, ignore_errors=True)
        seconds, peak, _ = run_measured([args.gpt2c, "export", args.checkpoint, "-o", out, "--quiet"])
        runs.append((seconds, peak))
    onnx_bytes = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.startswith("model.onnx"))
    best = min(runs)
    print(json.dumps({"tool": "gpt2c-export", "checkpoint_mib": round(size / 2**20, 1),
                      "seconds_best": round(best[0], 2), "seconds_median": round(statistics.median(r[0] for r in runs), 2),
                      "peak_rss_mib": round(max(r[1] for r in runs)), "peak_over_checkpoint": round(max(r[1] for r in runs) * 2**20 / size, 2),
                      "onnx_mib": round(onnx_bytes / 2**20, 1)}), flush=True)
    if not args.skip_optimum:
        shutil.rmtree(os.path.join(args.work, "optimum"), ignore_errors=True)
        r = subprocess.run([sys.executable, args.peers, args.checkpoint, "--work", args.work, "--only", "optimum-export"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("peers.py failed:\n" + r.stderr[-3000:])
        for line in r.stdout.splitlines():
            peer = json.loads(line)
            print(json.dumps(dict(peer, onnx_mib=round(sum(
                os.path.getsize(os.path.join(args.work, "optimum", f)) for f in os.listdir(os.path.join(args.work, "optimum"))
                if f.startswith("model.onnx")) / 2**20, 1))), flush=True)
            if peer.get("seconds"):
                print(json.dumps({"ratio": "optimum/gpt2c export time", "value": round(peer["seconds"] / best[0], 1)}))


if __name__ == "__main__":
    main()
