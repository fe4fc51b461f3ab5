"""gpt2c.export and gpt2c.verify from the installed package."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import gpt2c


def test_export_writes_a_folder_that_verifies_against_its_checkpoint(tiny_export: Path, models: Path) -> None:
    for name in ["model.onnx", "config.json", "generation_config.json", "tokenizer.json"]:
        assert (tiny_export / name).is_file(), name
    report = gpt2c.verify(tiny_export, reference=models / "tiny-default", backends=["ort", "tract"])
    assert report["passed"] is True, json.dumps(report, indent=1)[:4000]
    assert report["schema"] == "gpt2c.verify/1"
    assert {case["backend"] for case in report["numeric"]} == {"ort", "tract"}
    assert all(case["passed"] for case in report["numeric"])


def test_export_returns_its_summary_and_takes_every_option_by_its_cli_name(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    summary = gpt2c.export(str(models / "tiny-default"), out, quantize="int8", layout="genai", opset=21)
    assert Path(summary["out_dir"]) == out
    assert summary["task"] == "text-generation-with-past"
    assert summary["n_layer"] == json.loads((models / "tiny-default" / "config.json").read_text())["n_layer"]
    assert "model.onnx" in summary["files"] and "genai_config.json" in summary["files"]
    assert summary["total_bytes"] == sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    # Lists and switches: quantize_skip is comma-separated on the command line, force a switch.
    again = gpt2c.export(models / "tiny-default", out, quantize="int8", quantize_skip=["attn", "mlp"], force=True)
    assert again["out_dir"] == summary["out_dir"]
    report = gpt2c.verify(out)
    assert report["passed"] is True


def test_export_of_a_hub_id_from_the_stand_in(models: Path, tmp_path: Path, monkeypatch, hub_stand_in) -> None:
    with hub_stand_in({"team/tiny": models / "tiny-default"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        summary = gpt2c.export("team/tiny", tmp_path / "from-hub")
        assert any(r.startswith("/team/tiny/resolve/main/model.safetensors") for r in hub.requests), hub.requests
        with pytest.raises(gpt2c.ModelError) as missing:
            gpt2c.export("team/absent", tmp_path / "absent")
    assert "team/absent" in str(missing.value)
    assert not (tmp_path / "absent").exists()
    # The same bytes as an export of the folder itself.
    local = gpt2c.export(models / "tiny-default", tmp_path / "local")
    assert summary["parameters"] == local["parameters"]
    hub_onnx = (tmp_path / "from-hub" / "model.onnx").read_bytes()
    assert hub_onnx == (tmp_path / "local" / "model.onnx").read_bytes()


@pytest.mark.parametrize(
    "options, field",
    [
        ({"quantize": "int9"}, "quantize"),
        ({"opset": "eleven"}, "opset"),
        ({"opset": 3}, "opset"),
        ({"no_such_option": 1}, "no_such_option"),
        ({"force": "yes"}, "force"),
        ({"kv_cache": "shared"}, "kv_cache"),
    ],
)
def test_export_errors_name_their_option(models: Path, tmp_path: Path, options: dict, field: str) -> None:
    with pytest.raises(gpt2c.SettingError) as refused:
        gpt2c.export(models / "tiny-default", tmp_path / "out", **options)
    assert refused.value.field == field, (str(refused.value), refused.value.field)
    assert isinstance(refused.value, ValueError)
    assert not (tmp_path / "out").exists()


def test_export_of_a_missing_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(gpt2c.ModelError) as missing:
        gpt2c.export(tmp_path / "nothing-here", tmp_path / "out")
    assert "nothing-here" in str(missing.value)


def test_a_failed_check_is_in_the_report_not_raised(tiny_export: Path, models: Path) -> None:
    # The untied fixture's weights differ from tiny-default's: the numbers cannot agree.
    report = gpt2c.verify(tiny_export, reference=models / "tiny-untied", backends=["tract"])
    assert report["passed"] is False
    with pytest.raises(gpt2c.SettingError) as refused:
        gpt2c.verify(tiny_export, backends=["onnx"])
    assert refused.value.field == "backends"


def test_help_reads_like_the_cli_help_and_the_stub_lists_every_option(source: Path) -> None:
    from gpt2c import _native

    for call, command in [(gpt2c.export, "export"), (gpt2c.verify, "verify")]:
        doc = call.__doc__ or ""
        assert _native.help(command) in doc
        for keyword, _help in _native.keywords(command):
            assert "--" + keyword.replace("_", "-") in doc, keyword
    # The type stub shipped in the wheel names every keyword the command line takes.
    stub = Path(gpt2c.__file__).with_name("__init__.pyi").read_text()
    assert Path(gpt2c.__file__).with_name("py.typed").is_file()
    for command in ["export", "verify"]:
        start = stub.index(f"def {command}(")
        signature = stub[start : stub.index(") ->", start)]
        for keyword, _help in _native.keywords(command):
            # verify's `json` switch only changes what the command line prints: a dict either way.
            if (command, keyword) != ("verify", "json"):
                assert f"    {keyword}: " in signature, (command, keyword)
