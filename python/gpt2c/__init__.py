"""gpt2c compiles Hugging Face GPT-2 checkpoints into ONNX, runs them and serves them.

The package holds the same Rust code as the ``gpt2c`` command line, which it also installs:

    import gpt2c
    gpt2c.export("openai-community/gpt2", "out/gpt2", quantize="int8")
    report = gpt2c.verify("out/gpt2")
    model = gpt2c.Model("out/gpt2")
    model.generate("Hello, my name is", max_new_tokens=20, do_sample=True, top_p=0.9, seed=1)

``export`` and ``verify`` take every option of ``gpt2c export`` and ``gpt2c verify`` as keywords
under its command-line name (``--kv-cache shared`` is ``kv_cache="shared"``); ``Model`` takes
transformers' generate() keywords. Errors are ``gpt2c.Error`` subclasses. The work runs with the
GIL released.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

from . import _onnxruntime
from ._errors import BackendError, Error, ModelError, SettingError

_onnxruntime.configure()

from . import _native  # noqa: E402  (after ORT_DYLIB_PATH is set)
from ._native import Model, Stream  # noqa: E402

__version__: str = _native.__version__
__all__ = ["export", "verify", "Model", "Stream", "Error", "SettingError", "ModelError", "BackendError"]

PathLike = Union[str, "os.PathLike[str]"]


def export(model: Optional[PathLike], output: PathLike, **options: Any) -> Dict[str, Any]:
    return _native.export(model, output, options)


def verify(export: PathLike, **options: Any) -> Dict[str, Any]:
    return _native.verify(export, options)


def _python_help(command: str, call: str, returns: str) -> str:
    return (
        f"{call}\n\n{returns}\n\nEvery option of `gpt2c {command}` is a keyword under its command-line name, "
        "dashes as underscores (--kv-cache shared → kv_cache=\"shared\"); switches take True/False, lists "
        "take Python lists. A refused option raises gpt2c.SettingError naming it.\n\n"
        f"The command line's help (`gpt2c {command} --help`):\n\n" + _native.help(command)
    )


export.__doc__ = _python_help(
    "export",
    "gpt2c.export(model, output, **options) -> dict",
    "Compiles a checkpoint folder or Hub id (`model`; None with config=..., random_init=True) into the export "
    "folder `output`, and returns the summary: out_dir, parameters, n_layer, task, total_bytes, files, "
    "external_data, seconds, warnings. Prints nothing unless quiet=False.",
)
verify.__doc__ = _python_help(
    "verify",
    "gpt2c.verify(export, **options) -> dict",
    "Checks an export folder and returns the report (schema gpt2c.verify/1, as `gpt2c verify --json` prints "
    "it); report[\"passed\"] says whether every check passed. A failed check is in the report, not an exception.",
)
