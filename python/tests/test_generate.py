"""gpt2c.Model from the installed package, against transformers' ids (models/generation/*.json,
made by models/make_generation_fixtures.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import gpt2c


def cases(models: Path, name: str) -> list:
    return json.loads((models / "generation" / f"{name}.json").read_text())["cases"]


@pytest.mark.parametrize("backend", ["ort", "tract"])
def test_generate_ids_equal_transformers_on_every_fixture_case(tiny_export: Path, models: Path, backend: str) -> None:
    model = gpt2c.Model(tiny_export, backend=backend)
    assert backend in model.backend.lower().replace("onnx runtime", "ort"), model.backend
    all_cases = cases(models, "tiny-default")
    assert len(all_cases) >= 20 and any("beam" in c["name"] for c in all_cases)
    for case in all_cases:
        got = model.generate_ids(case["prompts"], **case["kwargs"])
        assert got == case["sequences"], case["name"]


def test_trained_model_greedy_and_beam_ids_and_text(trained_export: Path, shared: Path, models: Path) -> None:
    model = gpt2c.Model(trained_export, threads=2)
    trained = cases(models, "tiny-trained")
    assert {c["name"] for c in trained} >= {"greedy", "beam", "batch_of_three"}
    for case in trained:
        assert model.generate_ids(case["prompts"], **case["kwargs"]) == case["sequences"], case["name"]
    greedy = next(c for c in trained if c["name"] == "greedy")
    prompt = model.decode(greedy["prompts"][0])
    assert model.encode(prompt) == greedy["prompts"][0]
    text = model.generate(prompt, **greedy["kwargs"])
    assert text == model.decode(greedy["sequences"][0])
    beam = next(c for c in trained if c["name"] == "beam")
    texts = model.generate(model.decode(beam["prompts"][0]), **beam["kwargs"])
    assert texts == [model.decode(s) for s in beam["sequences"]]


def test_seeded_sampling_is_reproducible(trained_export: Path) -> None:
    model = gpt2c.Model(trained_export)
    settings = dict(max_new_tokens=24, do_sample=True, top_p=0.9, temperature=1.2)
    first = model.generate("Once upon a time", seed=7, **settings)
    assert model.generate("Once upon a time", seed=7, **settings) == first
    # Another model object, same seed: same text.
    assert gpt2c.Model(trained_export).generate("Once upon a time", seed=7, **settings) == first
    others = {model.generate("Once upon a time", seed=s, **settings) for s in range(8, 12)}
    assert len(others | {first}) > 1, "different seeds never changed the text"


def test_streamed_pieces_add_up_to_the_generated_text(trained_export: Path) -> None:
    model = gpt2c.Model(trained_export)
    prompt = "The little dog"
    for settings in [dict(max_new_tokens=30), dict(max_new_tokens=30, do_sample=True, seed=3, top_k=20)]:
        pieces = list(model.stream(prompt, **settings))
        assert len(pieces) > 1
        assert prompt + "".join(pieces) == model.generate(prompt, **settings)
    with pytest.raises(gpt2c.SettingError) as refused:
        list(model.stream(prompt, num_beams=2, max_new_tokens=4))
    assert refused.value.field == "num_beams"


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"top_p": 2.0}, "top_p"),
        ({"temperature": -1.0, "do_sample": True}, "temperature"),
        ({"num_beams": 0}, "num_beams"),
        ({"max_new_tokens": "many"}, "max_new_tokens"),
        ({"eos_token_id": [1, "x"]}, "eos_token_id"),
        ({"seed": object()}, "seed"),
        ({"max_new_token": 3}, "max_new_token"),
    ],
)
def test_generation_errors_name_their_setting(tiny_export: Path, settings: dict, field: str) -> None:
    model = gpt2c.Model(tiny_export)
    with pytest.raises(gpt2c.SettingError) as refused:
        model.generate("ab", **settings)
    assert refused.value.field == field, (str(refused.value), refused.value.field)
    # The model still generates afterwards.
    assert isinstance(model.generate("ab", max_new_tokens=2), str)


def test_bad_prompts_and_models_raise_their_class(tiny_export: Path, tmp_path: Path) -> None:
    model = gpt2c.Model(tiny_export)
    with pytest.raises(gpt2c.SettingError) as too_big:
        model.generate_ids([[1, 10**6]], max_new_tokens=2)
    assert too_big.value.field == "prompt"
    with pytest.raises(gpt2c.SettingError) as empty:
        model.generate_ids([[]], max_new_tokens=2)
    assert empty.value.field == "prompt"
    with pytest.raises(gpt2c.ModelError):
        gpt2c.Model(tmp_path / "not-an-export")
    with pytest.raises(gpt2c.SettingError) as backend:
        gpt2c.Model(tiny_export, backend="cuda")
    assert backend.value.field == "backend"
    with pytest.raises(gpt2c.SettingError) as threads:
        gpt2c.Model(tiny_export, threads=100_000)
    assert threads.value.field == "threads"


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda m, path: m.generate_ids([[-1, 2]]), "input_ids"),
        (lambda m, path: m.generate_ids([[2**40]]), "input_ids"),
        (lambda m, path: m.generate_ids("ab"), "input_ids"),
        (lambda m, path: m.generate(5), "prompt"),
        (lambda m, path: m.generate(["ab", None]), "prompt"),
        (lambda m, path: m.stream(["ab"]), "prompt"),
        (lambda m, path: m.encode(b"ab"), "text"),
        (lambda m, path: m.decode([-5]), "ids"),
        (lambda m, path: gpt2c.Model(path, threads=-1), "threads"),
        (lambda m, path: gpt2c.Model(path, ep="cuda"), "ep"),
        (lambda m, path: gpt2c.Model(path, backend=1), "backend"),
        (lambda m, path: gpt2c.Model(None), "path"),
        (lambda m, path: gpt2c.export(123, "out"), "model"),
        (lambda m, path: gpt2c.verify(["a"]), "export"),
    ],
)
def test_arguments_of_the_wrong_type_are_setting_errors(tiny_export: Path, call, field: str) -> None:
    model = gpt2c.Model(tiny_export)
    with pytest.raises(gpt2c.SettingError) as refused:
        call(model, tiny_export)
    assert refused.value.field == field, (str(refused.value), refused.value.field)
    assert f"`{field}`" in str(refused.value)


def test_the_message_is_the_one_the_cli_prints(tiny_export: Path) -> None:
    with pytest.raises(gpt2c.SettingError) as refused:
        gpt2c.Model(tiny_export).generate("ab", top_p=2.0)
    cli = Path(sys.executable).with_name("gpt2c")
    done = subprocess.run(
        [str(cli), "generate", str(tiny_export), "--prompt", "ab", "--top-p", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {refused.value}"


def test_generation_releases_the_gil(trained_export: Path) -> None:
    model = gpt2c.Model(trained_export)
    result = {}
    worker = threading.Thread(target=lambda: result.update(text=model.generate("A", max_new_tokens=60)))
    ticks = 0
    worker.start()
    while worker.is_alive():
        ticks += 1
        time.sleep(0.001)
    worker.join()
    assert "text" in result
    # The main thread ran while generation was under way (a held GIL would give it none).
    assert ticks > 5, ticks
