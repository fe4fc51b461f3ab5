"""The exceptions gpt2c raises. Each carries the message the command line prints."""

from __future__ import annotations

from typing import Optional


class Error(Exception):
    """Base of every gpt2c error."""


class SettingError(Error, ValueError):
    """An option or generation setting is refused; ``field`` names it (None when the message
    concerns several)."""

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field


class ModelError(Error):
    """The checkpoint, export folder or Hub id cannot be read or used."""


class BackendError(Error):
    """The runtime cannot run it: ONNX Runtime's library, an execution provider, tract."""
