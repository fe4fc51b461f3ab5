"""The installed wheel itself: where it lives, what it brings, its console script and server."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import gpt2c


def test_the_package_is_the_installed_wheel_and_torch_is_absent(source: Path) -> None:
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(gpt2c.__file__).resolve().parent == site / "gpt2c"
    native = Path(gpt2c._native.__file__).name
    assert native.startswith("_native.") and native.endswith((".so", ".pyd")), native
    for entry in sys.path:
        if entry:
            assert source not in Path(entry).resolve().parents and Path(entry).resolve() != source, entry
    assert importlib.util.find_spec("torch") is None
    with pytest.raises(ImportError):
        import torch  # noqa: F401


def test_onnx_runtime_is_found_without_setting_anything(tiny_export: Path) -> None:
    # The library comes from the onnxruntime package the wheel depends on.
    import onnxruntime

    library = os.environ["ORT_DYLIB_PATH"]
    assert Path(library).parent == Path(onnxruntime.__file__).parent / "capi"
    assert onnxruntime.__version__ == "1.31.1"
    model = gpt2c.Model(tiny_export, backend="ort")
    assert "ONNX Runtime" in model.backend
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    done = subprocess.run(
        [sys.executable, "-c", "import gpt2c, os; print(os.environ['ORT_DYLIB_PATH'])"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == library, done.stderr


def test_console_script_and_python_m_run_the_cli(tiny_export: Path, models: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("gpt2c")
    assert script.is_file()
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"gpt2c {gpt2c.__version__}"
    helped = subprocess.run([sys.executable, "-m", "gpt2c", "export", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--quantize" in helped.stdout
    out = tmp_path / "cli-export"
    exported = subprocess.run(
        [str(script), "export", str(models / "tiny-default"), "-o", str(out), "--quantize", "int4"],
        capture_output=True, text=True, timeout=300,
    )
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("exported ") and (out / "model.onnx").is_file()
    verified = subprocess.run([str(script), "verify", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["passed"] is True
    wrong = subprocess.run([str(script), "export", "x", "-o", str(tmp_path / "y"), "--quantize", "int9"],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "int9" in wrong.stderr and not (tmp_path / "y").exists()
    generated = subprocess.run(
        [str(script), "generate", str(tiny_export), "--prompt", "ab", "--max-new-tokens", "5", "--json", "--backend", "ort"],
        capture_output=True, text=True, timeout=120,
    )
    assert generated.returncode == 0, generated.stderr
    sequence = json.loads(generated.stdout)["sequences"][0]
    model = gpt2c.Model(tiny_export, backend="ort")
    ids = model.encode("ab")
    assert model.generate_ids([ids], max_new_tokens=5) == [ids + sequence["token_ids"]]


def test_gpt2c_serve_from_the_package_answers_the_openai_client(trained_export: Path) -> None:
    import openai

    script = Path(sys.executable).with_name("gpt2c")
    server = subprocess.Popen(
        [str(script), "serve", str(trained_export), "--port", "0", "--model-name", "trained"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = server.stdout.readline()
        assert first.startswith("gpt2c serve: listening on http://127.0.0.1:"), first
        address = first.split("listening on ")[1].split()[0]
        while "serving" not in first:
            first = server.stdout.readline()
            assert first, server.stderr.read()
        client = openai.OpenAI(base_url=address + "/v1", api_key="none", max_retries=0, timeout=60)
        completion = client.completions.create(model="trained", prompt="Once upon a time", max_tokens=12, temperature=0)
        expected = gpt2c.Model(trained_export).generate("Once upon a time", max_new_tokens=12)
        assert "Once upon a time" + completion.choices[0].text == expected
        assert completion.usage.completion_tokens == 12
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
