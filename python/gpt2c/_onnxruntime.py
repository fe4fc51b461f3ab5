"""Finds ONNX Runtime's shared library in the ``onnxruntime`` package this environment has (a
dependency of the wheel), so the runtime loads it with no environment variable to set."""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from typing import Optional

_NAMES = {"win32": "onnxruntime.dll", "darwin": "libonnxruntime*.dylib"}


def library() -> Optional[str]:
    """The library file inside the onnxruntime package, without importing the package."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    pattern = _NAMES.get(sys.platform, "libonnxruntime.so*")
    for folder in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(folder, "capi", pattern)))
        if found:
            return found[-1]
    return None


def configure() -> None:
    """Points ORT_DYLIB_PATH at this environment's library unless the user set it."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return
    path = library()
    if path is not None:
        os.environ["ORT_DYLIB_PATH"] = path
