#!/usr/bin/env python3
"""What a Python user pays to get an ONNX export: `pip install gpt2c` + `gpt2c export` beside
`pip install optimum[onnxruntime]` + `optimum-cli export onnx`, in one run on one machine.

    python tests/bench/wheel_vs_optimum.py WHEEL CHECKPOINT [--work /tmp/wheel-bench] [--python python3] [--no-cold]

For each: a fresh virtual environment, `pip install` timed with pip's cache as it is (warm) and with
--no-cache-dir (cold: everything downloaded), the environment's size on disk, and the first export
from a fresh process (a new shell running the console script; for gpt2c also `import gpt2c;
gpt2c.export(...)`). One JSON object per line, then a table.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time


def timed(cmd, **kw):
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def size_of(path):
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout.split()[0])


def install(python, venv, requirement, cold):
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", venv], check=True)
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if cold:
        pip.append("--no-cache-dir")
    return timed(pip + [requirement])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wheel")
    p.add_argument("checkpoint")
    p.add_argument("--work", default="/tmp/wheel-bench")
    p.add_argument("--python", default="python3")
    p.add_argument("--no-cold", action="store_true", help="skip the installs with an empty pip cache")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    wheel = os.path.abspath(args.wheel)
    rows = {}

    for name, requirement, export in [
        ("gpt2c", wheel, lambda venv, out: [os.path.join(venv, "bin", "gpt2c"), "export", args.checkpoint, "-o", out, "--quiet"]),
        ("optimum", "optimum[onnxruntime]", lambda venv, out: [os.path.join(venv, "bin", "optimum-cli"), "export", "onnx",
                                                          "--model", args.checkpoint, "--task", "text-generation-with-past", out]),
    ]:
        venv = os.path.join(args.work, f"venv-{name}")
        row = {"tool": name}
        if not args.no_cold:
            row["install_cold_s"] = round(install(args.python, venv, requirement, cold=True), 1)
        row["install_warm_s"] = round(install(args.python, venv, requirement, cold=False), 1)
        row["venv_mb"] = round(size_of(venv) / 1e6)
        out = os.path.join(args.work, f"out-{name}")
        shutil.rmtree(out, ignore_errors=True)
        row["first_export_s"] = round(timed(["bash", "-c", 'exec "$@"', "export", *export(venv, out)]), 2)
        if name == "gpt2c":
            row["wheel_mb"] = round(os.path.getsize(wheel) / 1e6, 1)
            shutil.rmtree(out, ignore_errors=True)
            code = f"import gpt2c; gpt2c.export({args.checkpoint!r}, {out!r})"
            row["first_export_python_s"] = round(timed([os.path.join(venv, "bin", "python"), "-c", code]), 2)
        rows[name] = row
        print(json.dumps(row), flush=True)

    keys = ["wheel_mb", "install_cold_s", "install_warm_s", "venv_mb", "first_export_s", "first_export_python_s"]
    print("\n| | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(str(row.get(k, "–")) for k in keys) + " |")


if __name__ == "__main__":
    main()
