#!/usr/bin/env python3
"""Load on `gpt2c serve` (and optionally llama.cpp's llama-server) through OpenAI's /v1/completions, on loopback.

    python tests/bench/serve_load.py --workdir /tmp/serve-load [--gpt2c target/release/gpt2c] [--threads 2]
        [--levels 1,4,16,64] [--requests N] [--max-batch-rows N] [--prefix-cache-mib M] [--serve-arg '--backend tract']
        [--llama-server DIR/bin/llama-server --gguf gpt2-small.f32.gguf] [--json /tmp/serve-load.json]
    python tests/bench/serve_load.py --export out/gpt2-small --levels 1,4 --skip-prefix    # an existing export

--workdir makes a random-weight gpt2-small checkpoint there (make_random_checkpoint.py: torch + transformers, the
GPT-2 tokenizer files copied in) and its export (`gpt2c export -q`), unless they are there already.

1. Concurrency, per level C: C client threads send streamed requests back to back (max(8, 2*C), or --requests),
   each a 128-token prompt of token ids from a pool of 16 seeded ones, 64 new tokens, greedy, `min_new_tokens` =
   `max_tokens` (llama-server: `ignore_eos`). Reports tokens/s (generated tokens / wall time), p50/p99 time to
   first token (first chunk with text) and inter-token latency (gaps between chunks with text), errors (status
   != 200, error event, malformed stream, no [DONE], wrong token count), garbled streams (text other than the
   same prompt's sent alone, non-streamed, before the load), and tokens/s and p99 ITL relative to level 1.
   As pool prompts repeat, gpt2c runs this part with --prefix-cache-mib 0 (llama-server gets `cache_prompt:
   false`) unless --load-prefix-cache. On random weights greedy margins are tiny, so "garbled" is in effect a
   bit-exactness check against batch 1.
2. Prefix cache, on a fresh server: one client; per prefix (4 of 512 tokens) one request with a new 16-token
   suffix (uncached), then 4 more with new suffixes (cached), 8 new tokens each: median uncached vs cached TTFT,
   the speed-up, gpt2c's prefix-cache counters from /metrics. llama-server runs this part with -np 1 (-np 16
   -c 4096 leaves each slot 256 positions).
Each level has a fixed request count and a wall-clock cap (--level-timeout); every HTTP call has a timeout.
Prints the command line, one JSON object per result, then markdown tables; --json writes them all.

llama.cpp (../shared/bench/llamacpp.sh builds llama-server and converts a checkpoint to GGUF): llama-bench's
generation test (tg) starts from an empty context, with no prompt, as does llama-server's cache for a request
with nothing cached; here every request first prefills its 128-token prompt and its new tokens attend over it,
so these tokens/s are not comparable with llama-bench's tg figures.
"""
import argparse
import http.client
import json
import os
import random
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

HOST = "127.0.0.1"
MODEL = "bench"
VOCAB = 50257  # ids 0..50255 in prompts; 50256 (<|endoftext|>) is left out


class Server:
    """A server process this script started: its output in a log file (last lines kept for errors)."""

    def __init__(self, name, cmd, log_path, port=None, env=None):
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log_path
        self.tail = deque(maxlen=40)
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, text=True, errors="replace")
        threading.Thread(target=self._read, daemon=True).start()  # drains the pipe so the server never blocks

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            self.tail.append(line.rstrip())
            m = re.search(r"listening on http://[^\s:]+:(\d+)", line)  # gpt2c's first line, with --port 0
            if m and self.port is None:
                self.port = int(m.group(1))

    def fail(self, why):
        sys.exit(f"{self.name} failed to start: {why}\n$ {shlex.join(self.cmd)}\n--- last output ({self.log_path}):\n"
                 + "\n".join(self.tail))

    def wait_ready(self, timeout):
        """Polls GET /health until 200; exits non-zero if the process dies or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                self.fail(f"exited with status {self.proc.returncode}")
            if self.port is not None:
                try:
                    status, _ = http_call(self, "GET", "/health", None, 5)
                    if status == 200:
                        return
                except (OSError, http.client.HTTPException):
                    pass
            time.sleep(0.25)
        self.fail(f"/health not 200 after {timeout:.0f} s" if self.port
                  else f"no `listening on` line in {timeout:.0f} s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()  # gpt2c drains requests in flight on SIGTERM; ours are finished or cancelled
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def http_call(srv, method, path, body, timeout):
    """One request, read whole: (status, body bytes)."""
    conn = http.client.HTTPConnection(HOST, srv.port, timeout=timeout)
    try:
        conn.request(method, path, None if body is None else json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def body_for(srv, prompt, max_tokens, stream, cache_prompt):
    b = dict(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=stream)
    if stream:
        b["stream_options"] = {"include_usage": True}
    if srv.name == "gpt2c":
        b["min_new_tokens"] = max_tokens  # gpt2c refuses unknown fields, so llama's names go only to llama
    else:
        b.update(ignore_eos=True, cache_prompt=cache_prompt)
    return b


def alone(srv, prompt, max_tokens, timeout):
    """The reference text of `prompt`, non-streamed, nothing else in flight (None on error)."""
    try:
        body = body_for(srv, prompt, max_tokens, False, False)
        status, data = http_call(srv, "POST", "/v1/completions", body, timeout)
        return json.loads(data)["choices"][0]["text"] if status == 200 else None
    except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError):
        return None


def streamed(srv, prompt, max_tokens, timeout, cache_prompt=False):
    """One streamed completion, timed on arrival of each server-sent event."""
    rec = dict(ok=False, error=None, ttft=None, itl=[], tokens=0, text="")
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(HOST, srv.port, timeout=timeout)  # per socket read; the total is checked below
    try:
        conn.request("POST", "/v1/completions", json.dumps(body_for(srv, prompt, max_tokens, True, cache_prompt)),
                     {"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            rec["error"] = f"HTTP {resp.status}: {resp.read(200)!r}"
            return rec
        pieces, last, usage, done = [], None, None, False
        while not done:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"stream still open after {timeout} s")
            line = resp.readline()  # http.client undoes the chunked transfer encoding
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, `:` keep-alive comments, `event:` lines
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                rec["error"] = f"error event: {json.dumps(chunk['error'])[:200]}"
                return rec
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                text = choice.get("text") or ""
                if text:  # chunks without text (e.g. half a UTF-8 character held back) do not count as tokens
                    now = time.monotonic()
                    if last is None:
                        rec["ttft"] = now - t0
                    else:
                        rec["itl"].append(now - last)
                    last = now
                    pieces.append(text)
        if not done:
            rec["error"] = "stream ended without data: [DONE]"
            return rec
        rec["text"] = "".join(pieces)
        rec["tokens"] = usage["completion_tokens"] if usage else len(pieces)
        if usage and usage["completion_tokens"] != max_tokens:
            rec["error"] = f"{usage['completion_tokens']} tokens generated, {max_tokens} asked"
            return rec
        if rec["ttft"] is None:
            rec["error"] = "no chunk with text"
            return rec
        rec["ok"] = True
    except (OSError, http.client.HTTPException) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    except (ValueError, KeyError, TypeError) as e:  # JSON that does not parse or lacks a field
        rec["error"] = f"malformed stream: {type(e).__name__}: {e}"
    finally:
        conn.close()
    return rec


def pct(xs, q):
    """Nearest-rank percentile in ms (None when there are no samples)."""
    if not xs:
        return None
    s = sorted(xs)
    return round(1000 * s[max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))], 1)


def run_level(srv, clients, n_requests, pool, ref, args):
    """`clients` threads taking request numbers from a shared counter until n_requests or the level's cap."""
    lock, counter, recs = threading.Lock(), [0], []
    deadline = time.monotonic() + args.level_timeout

    def client():
        while True:
            with lock:
                i = counter[0]
                counter[0] += 1
            if i >= n_requests or time.monotonic() > deadline:
                return
            rec = streamed(srv, pool[i % len(pool)], args.new_tokens, args.request_timeout, args.load_prefix_cache)
            rec["prompt"] = i % len(pool)
            with lock:
                recs.append(rec)

    start = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # each request is bounded by --request-timeout, so this ends
    wall = time.monotonic() - start
    ok = [r for r in recs if r["ok"]]
    garbled = sum(1 for r in ok if ref[r["prompt"]] is not None and r["text"] != ref[r["prompt"]])
    errors = [r["error"] for r in recs if not r["ok"]]
    itl = [g for r in ok for g in r["itl"]]
    return dict(server=srv.name, clients=clients, requests=len(recs), planned=n_requests, wall_s=round(wall, 2),
                tok_s=round(sum(r["tokens"] for r in ok) / wall, 1),
                ttft_p50_ms=pct([r["ttft"] for r in ok], 50), ttft_p99_ms=pct([r["ttft"] for r in ok], 99),
                itl_p50_ms=pct(itl, 50), itl_p99_ms=pct(itl, 99), errors=len(errors), garbled=garbled,
                first_errors=errors[:3], capped=len(recs) < n_requests)


def metrics(srv):
    """gpt2c's unlabelled Prometheus samples as {name: value} ({} when /metrics does not answer)."""
    try:
        status, data = http_call(srv, "GET", "/metrics", None, 10)
    except (OSError, http.client.HTTPException):
        return {}
    found = re.findall(r"^(gpt2c_\w+) ([-+.\deE]+)$", data.decode(errors="replace"), re.M) if status == 200 else []
    return {k: float(v) for k, v in found}


def run_prefix(srv, args, rng):
    """Per prefix: 1 uncached request, then --cached-per-prefix with the same prefix and new suffixes."""
    before = metrics(srv) if srv.name == "gpt2c" else {}
    uncached, cached, errors = [], [], []
    for _ in range(args.prefixes):
        prefix = [rng.randrange(VOCAB - 1) for _ in range(args.prefix_tokens)]
        for k in range(1 + args.cached_per_prefix):
            suffix = [rng.randrange(VOCAB - 1) for _ in range(args.suffix_tokens)]
            rec = streamed(srv, prefix + suffix, args.prefix_new_tokens, args.request_timeout, cache_prompt=True)
            if not rec["ok"]:
                errors.append(rec["error"])
            else:
                (cached if k else uncached).append(rec["ttft"])
    after = metrics(srv) if srv.name == "gpt2c" else {}
    med = lambda xs: round(1000 * statistics.median(xs), 1) if xs else None  # noqa: E731
    row = dict(server=srv.name, prompt_tokens=args.prefix_tokens + args.suffix_tokens,
               uncached_ttft_ms=med(uncached), cached_ttft_ms=med(cached),
               speedup=round(statistics.median(uncached) / statistics.median(cached), 2)
               if uncached and cached else None,
               uncached_ms=[round(1000 * x, 1) for x in uncached], cached_ms=[round(1000 * x, 1) for x in cached],
               errors=len(errors), first_errors=errors[:3])
    for key in ("hits", "misses", "reused_tokens"):
        name = f"gpt2c_prefix_cache_{key}_total"
        if name in after:
            row[f"cache_{key}"] = int(after[name] - before.get(name, 0))
    return row


def ensure_export(args, here):
    """--export as given, or the random gpt2-small checkpoint and its export under --workdir."""
    if args.export:
        return args.export
    ckpt, out = os.path.join(args.workdir, "gpt2-small-random"), os.path.join(args.workdir, "gpt2-small-export")
    os.makedirs(args.workdir, exist_ok=True)
    if not os.path.exists(os.path.join(ckpt, "config.json")):
        subprocess.run([args.python, os.path.join(here, "make_random_checkpoint.py"), "gpt2-small", ckpt], check=True)
    if not os.path.exists(os.path.join(out, "config.json")):
        force = ["--force"] if os.path.isdir(out) else []  # a half-written folder from an interrupted run
        subprocess.run([args.gpt2c, "export", ckpt, "-o", out, "-q", *force], check=True)
    return out


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(kind, args, export, phase, logdir, servers):
    """A server for one phase ("load" or "prefix"), ready to serve; listed in `servers` first, to be stopped."""
    if kind == "gpt2c":
        cmd = [args.gpt2c, "serve", export, "--host", HOST, "--port", "0", "--threads", str(args.threads),
               "--model-name", MODEL]
        if args.max_batch_rows:
            cmd += ["--max-batch-rows", str(args.max_batch_rows)]
        if phase == "load" and not args.load_prefix_cache:
            cmd += ["--prefix-cache-mib", "0"]
        elif args.prefix_cache_mib is not None:
            cmd += ["--prefix-cache-mib", str(args.prefix_cache_mib)]
        cmd += [a for s in args.serve_arg for a in shlex.split(s)]
        srv = Server("gpt2c", cmd, os.path.join(logdir, f"gpt2c-{phase}.log"))
    else:
        port, np_ = free_port(), (args.llama_np if phase == "load" else 1)
        cmd = [args.llama_server, "-m", args.gguf, "-np", str(np_), "-c", str(args.llama_ctx), "-t", str(args.threads),
               "--port", str(port), "--host", HOST, *shlex.split(args.llama_extra)]
        env = dict(os.environ)  # llamacpp.sh leaves its shared libraries beside the binaries
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.abspath(args.llama_server)),
                                                               env.get("LD_LIBRARY_PATH")]))
        srv = Server("llama.cpp", cmd, os.path.join(logdir, f"llama-{phase}.log"), port=port, env=env)
    servers.append(srv)
    print(f"# {srv.name} ({phase}): $ {shlex.join(cmd)}", flush=True)
    srv.wait_ready(args.start_timeout)
    return srv


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--export", help="an export folder to serve")
    src.add_argument("--workdir", help="make a random gpt2-small checkpoint and its export here unless present")
    p.add_argument("--gpt2c", default=os.path.join(here, "../../target/release/gpt2c"))
    p.add_argument("--python", default=sys.executable, help="Python with torch + transformers, for the checkpoint")
    p.add_argument("--max-batch-rows", type=int, help="passed to gpt2c serve (default: its own)")
    p.add_argument("--prefix-cache-mib", type=int, help="passed to gpt2c serve for the prefix part")
    p.add_argument("--load-prefix-cache", action="store_true",
                   help="keep the prefix cache on during the load part (repeated pool prompts then hit it)")
    p.add_argument("--serve-arg", action="append", default=[], help="more `gpt2c serve` flags, e.g. '--backend tract'")
    for name, default in (("--threads", 2), ("--prompt-tokens", 128), ("--new-tokens", 64), ("--seed", 0),
                          ("--prefixes", 4), ("--cached-per-prefix", 4), ("--prefix-tokens", 512),
                          ("--suffix-tokens", 16), ("--prefix-new-tokens", 8), ("--llama-np", 16),
                          ("--llama-ctx", 4096)):
        p.add_argument(name, type=int, default=default)
    p.add_argument("--levels", default="1,4,16,64", help="client counts, comma-separated")
    p.add_argument("--requests", type=int, help="requests per level (default max(8, 2 * clients))")
    p.add_argument("--pool", type=int, default=16, help="distinct prompts (the alone pass sends each once)")
    p.add_argument("--skip-prefix", action="store_true", help="only the concurrency part")
    p.add_argument("--request-timeout", type=float, default=180, help="seconds per HTTP call")
    p.add_argument("--level-timeout", type=float, default=600, help="no new requests in a level after this (s)")
    p.add_argument("--start-timeout", type=float, default=300, help="seconds for a server to answer /health")
    p.add_argument("--llama-server", help="a built llama-server binary (with --gguf: also measure llama.cpp)")
    p.add_argument("--gguf")
    p.add_argument("--llama-extra", default="", help="more llama-server flags, one string")
    p.add_argument("--json", help="write every result here")
    args = p.parse_args()
    print("$ " + shlex.join([os.path.basename(sys.executable)] + sys.argv), flush=True)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if bool(args.llama_server) != bool(args.gguf):
        p.error("--llama-server and --gguf go together")
    if args.prefix_tokens + args.suffix_tokens + args.prefix_new_tokens >= 1024 and not args.skip_prefix:
        p.error("prefix + suffix + new tokens must stay under gpt2's 1024 positions")
    if args.llama_server and args.prompt_tokens + args.new_tokens > args.llama_ctx // args.llama_np:
        print(f"# warning: llama-server slots hold {args.llama_ctx // args.llama_np} positions each", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below stops the servers

    export = ensure_export(args, here)
    logdir = args.workdir or tempfile.mkdtemp(prefix="serve-load-")  # server logs
    print(f"# server logs in {logdir}", flush=True)
    rng = random.Random(args.seed)
    pool = [[rng.randrange(VOCAB - 1) for _ in range(args.prompt_tokens)] for _ in range(args.pool)]
    kinds = ["gpt2c"] + (["llama.cpp"] if args.llama_server else [])
    load_rows, prefix_rows, servers = [], [], []
    try:
        for kind in kinds:
            srv = start(kind, args, export, "load", logdir, servers)
            t = time.monotonic()
            ref = [alone(srv, pr, args.new_tokens, args.request_timeout) for pr in pool]  # also warms the server
            print(f"# {kind}: alone pass, {len(pool)} requests in {time.monotonic() - t:.1f} s, "
                  f"{sum(r is None for r in ref)} failed", flush=True)
            rows = []
            for c in levels:
                row = run_level(srv, c, args.requests or max(8, 2 * c), pool, ref, args)
                print(json.dumps(row), flush=True)
                rows.append(row)
            base = next((r for r in rows if r["clients"] == 1), rows[0]) if rows else None
            for r in rows:  # relative to level 1 (or the first level when 1 is not measured)
                r["tok_s_vs_1"] = round(r["tok_s"] / base["tok_s"], 2) if base["tok_s"] else None
                r["itl_p99_vs_1"] = round(r["itl_p99_ms"] / base["itl_p99_ms"], 2) \
                    if r["itl_p99_ms"] and base["itl_p99_ms"] else None
            load_rows += rows
            srv.stop()
            if not args.skip_prefix:
                srv = start(kind, args, export, "prefix", logdir, servers)  # fresh caches
                row = run_prefix(srv, args, random.Random(args.seed + 1))  # same prefixes for every server
                print(json.dumps(row), flush=True)
                prefix_rows.append(row)
                srv.stop()
    finally:
        for srv in servers:
            try:
                srv.stop()
            except Exception as e:  # keep stopping the others
                print(f"# could not stop {srv.name}: {e}", file=sys.stderr)

    print(f"\n{args.prompt_tokens}-token prompts, {args.new_tokens} new tokens each, greedy, streamed; "
          f"{args.threads} threads\n")
    print("| server | clients | requests | tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors | "
          "garbled | tok/s ÷ 1 client | ITL p99 ÷ 1 client |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in load_rows:
        req = f"{r['requests']}/{r['planned']}" + (" (capped)" if r["capped"] else "")
        print(f"| {r['server']} | {r['clients']} | {req} | {r['tok_s']} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | "
              f"{r['itl_p50_ms']} | {r['itl_p99_ms']} | {r['errors']} | {r['garbled']} | {r['tok_s_vs_1']} | "
              f"{r['itl_p99_vs_1']} |")
    if prefix_rows:
        print(f"\nPrefix cache: {args.prefixes} prefixes of {args.prefix_tokens} tokens, each 1 uncached + "
              f"{args.cached_per_prefix} cached requests with new {args.suffix_tokens}-token suffixes, "
              f"{args.prefix_new_tokens} new tokens\n")
        print("| server | prompt tokens | uncached TTFT ms (median) | cached TTFT ms (median) | speed-up | errors | "
              "cache hits / misses (gpt2c /metrics) |")
        print("|---|---|---|---|---|---|---|")
        for r in prefix_rows:
            hits = f"{r['cache_hits']} / {r['cache_misses']}" if "cache_hits" in r else "-"
            print(f"| {r['server']} | {r['prompt_tokens']} | {r['uncached_ttft_ms']} | {r['cached_ttft_ms']} | "
                  f"{r['speedup']} | {r['errors']} | {hits} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(command=sys.argv, export=export, servers=[s.cmd for s in servers], load=load_rows,
                           prefix=prefix_rows), f, indent=1)
    if any(r["errors"] for r in load_rows + prefix_rows):
        sys.exit("some requests failed (see `first_errors` above)")


if __name__ == "__main__":
    main()
