"""How long `gpt2c serve` takes to exit after SIGTERM while clients misbehave.

usage: serve_shutdown.py --gpt2c BINARY --export EXPORT [--backend tract] [--cases a,b,...] [--exit-limit S]

Each case starts its own server on 127.0.0.1 (an ephemeral port), sets up its clients, sends
SIGTERM and measures the time to the process's exit; it prints one Markdown table (case, flags,
what the clients saw, exit code, seconds from SIGTERM to exit). Standard library only; every
socket is on loopback and every wait is bounded.

Cases:
  stalled-body      headers announcing 100 bytes, 10 sent, then silence (default flags)
  stalled-body-g2   the same with --shutdown-grace-s 2
  stalled-reader    a 16-row stream whose client reads nothing (4 KiB receive buffer), --shutdown-grace-s 2
  long-stream-g1    a 16-prompt stream in flight past the grace period, --shutdown-grace-s 1
  idle-keepalive    8 idle keep-alive connections and a finished request (default flags)
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"


def start(binary, export, backend, flags):
    cmd = [binary, "serve", export, "--host", HOST, "--port", "0", "--backend", backend, "--threads", "2", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://([\d.]+):(\d+)", line)
    if not m:
        proc.kill()
        sys.exit(f"gpt2c serve did not say where it listens: {line!r}")
    port = int(m.group(2))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if request(port, "GET", "/health")[0] == 200:
            return proc, port
        time.sleep(0.05)
    proc.kill()
    sys.exit("the model did not load within 120 s")


def request(port, method, path, body=None, timeout=30):
    try:
        s = socket.create_connection((HOST, port), timeout=timeout)
    except OSError:
        return 0, ""
    data = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    try:
        s.sendall(head + data)
    except OSError:
        pass
    text = read_all(s, timeout)
    s.close()
    parts = text.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, text


def post_head(port, length):
    return (f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def stream_socket(port, body, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(60)
    s.connect((HOST, port))
    data = json.dumps(body).encode()
    s.sendall(post_head(port, len(data)) + data)
    return s


def read_all(s, limit_s=30):
    s.settimeout(limit_s)
    raw = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    except OSError:
        pass
    return raw.decode(errors="replace")


def terminate_and_time(proc):
    limit_s = ARGS.exit_limit
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, time.monotonic() - sent
    return code, time.monotonic() - sent


def case_stalled_body(args, flags):
    proc, port = start(args.gpt2c, args.export, args.backend, flags)
    s = socket.create_connection((HOST, port), timeout=60)
    s.sendall(post_head(port, 100) + b'{"model": ')
    time.sleep(0.2)
    code, took = terminate_and_time(proc)
    seen = read_all(s, 5).split("\r\n", 1)[0] or "connection closed"
    return code, took, f"stalled client: {seen}"


def sixteen(stream=True):
    return {"model": os.path.basename(os.path.normpath(ARGS.export)), "prompt": ["Once"] * 16, "max_tokens": 500,
            "min_new_tokens": 500, "temperature": 0, "stream": stream}


def case_stream(args, flags, rcvbuf=None, label="stream"):
    """A 16-prompt stream in flight; with `rcvbuf`, its client reads nothing at all."""
    proc, port = start(args.gpt2c, args.export, args.backend, flags + ["--max-batch-rows", "16"])
    s = stream_socket(port, sixteen(), rcvbuf=rcvbuf)
    if rcvbuf:
        time.sleep(0.5)
    else:
        s.recv(4096)
    code, took = terminate_and_time(proc)
    text = read_all(s, 10)
    ended = "error event + [DONE]" if '"error"' in text and "[DONE]" in text else "cut off"
    return code, took, f"{label}: {ended}"


def case_stalled_reader(args, flags):
    return case_stream(args, flags, rcvbuf=4096, label="stream reader")


def case_long_stream(args, flags):
    return case_stream(args, flags)


def case_idle(args, flags):
    proc, port = start(args.gpt2c, args.export, args.backend, flags)
    status, _ = request(port, "POST", "/v1/completions",
                        {"model": os.path.basename(os.path.normpath(args.export)), "prompt": "Hi", "max_tokens": 4})
    idle = [socket.create_connection((HOST, port), timeout=10) for _ in range(8)]
    time.sleep(0.2)
    code, took = terminate_and_time(proc)
    for s in idle:
        s.close()
    return code, took, f"finished request {status}; 8 idle connections closed"


CASES = {
    "stalled-body": (case_stalled_body, []),
    "stalled-body-g2": (case_stalled_body, ["--shutdown-grace-s", "2"]),
    "stalled-reader": (case_stalled_reader, ["--shutdown-grace-s", "2"]),
    "long-stream-g1": (case_long_stream, ["--shutdown-grace-s", "1"]),
    "idle-keepalive": (case_idle, []),
}


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpt2c", required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--backend", default="tract")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--exit-limit", type=float, default=300,
                   help="seconds to wait for the exit before killing the server (then: exit code None)")
    ARGS = args = p.parse_args()
    print("| case | flags | clients saw | exit code | SIGTERM → exit (s) |")
    print("|---|---|---|---|---|")
    for name in args.cases.split(","):
        fn, flags = CASES[name]
        code, took, seen = fn(args, flags)
        shown = " ".join(flags) or "defaults"
        exit_shown = "killed (still running)" if code is None else code
        print(f"| {name} | {shown} | {seen} | {exit_shown} | {took:.2f} |", flush=True)


if __name__ == "__main__":
    main()
