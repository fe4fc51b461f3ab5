# Type stubs of the gpt2c package. `export` and `verify` list every option of `gpt2c export` and
# `gpt2c verify` (python/tests/test_export.py checks the lists against the command line's).

import os
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Union, overload

PathLike = Union[str, os.PathLike[str]]

__version__: str

class Error(Exception): ...

class SettingError(Error, ValueError):
    field: Optional[str]
    def __init__(self, message: str, field: Optional[str] = ...) -> None: ...

class ModelError(Error): ...
class BackendError(Error): ...

def export(
    model: Optional[PathLike],
    output: PathLike,
    *,
    revision: str = "main",
    config: Optional[PathLike] = None,
    random_init: bool = False,
    seed: int = 0,
    opset: Optional[int] = None,
    dtype: Literal["fp32", "fp16"] = "fp32",
    io_dtype: Literal["fp32", "fp16"] = "fp32",
    quantize: Literal["none", "int8", "int8-weights", "int4"] = "none",
    quantize_skip: Optional[Sequence[Literal["attn", "mlp", "lm_head", "embedding"]]] = None,
    int4_activations: Optional[Literal["int8", "float"]] = None,
    task: Optional[
        Literal[
            "text-generation",
            "text-generation-with-past",
            "feature-extraction",
            "feature-extraction-with-past",
            "text-classification",
            "token-classification",
            "question-answering",
            "multiple-choice",
        ]
    ] = None,
    layout: Literal["optimum", "genai", "transformers.js", "triton"] = "optimum",
    triton_model_name: Optional[str] = None,
    triton_max_batch_size: Optional[int] = None,
    target: Literal["portable", "ort"] = "portable",
    kv_cache: Literal["concat", "shared"] = "concat",
    external_data: Literal["auto", "always", "never"] = "auto",
    force: bool = False,
    quiet: bool = True,
    generation: Optional[Literal["greedy-search", "beam-search", "sampling"]] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    no_repeat_ngram_size: Optional[int] = None,
    early_stopping: Optional[bool] = None,
    max_new_tokens: Optional[int] = None,
    max_length: Optional[int] = None,
    min_length: Optional[int] = None,
    num_beams: Optional[int] = None,
    num_return_sequences: Optional[int] = None,
    length_penalty: Optional[float] = None,
    repetition_penalty: Optional[float] = None,
    sampling_seed: Optional[int] = None,
) -> Dict[str, Any]: ...

def verify(
    export: PathLike,
    *,
    reference: Optional[PathLike] = None,
    backends: Sequence[Literal["ort", "tract"]] = ("ort", "tract"),
    tolerance: Optional[Union[float, str]] = None,
    seed: int = 0,
    threads: Optional[int] = None,
) -> Dict[str, Any]: ...

class Stream(Iterator[str]):
    def __iter__(self) -> "Stream": ...
    def __next__(self) -> str: ...

class Model:
    def __init__(
        self,
        path: PathLike,
        backend: Literal["auto", "ort", "tract"] = "auto",
        threads: Optional[int] = None,
        ep: Optional[Sequence[str]] = None,
        ep_strict: bool = False,
    ) -> None: ...
    @property
    def backend(self) -> str: ...
    @property
    def notices(self) -> List[str]: ...
    @overload
    def generate(self, prompt: str, **kwargs: Any) -> Union[str, List[str]]: ...
    @overload
    def generate(self, prompt: Sequence[str], **kwargs: Any) -> List[str]: ...
    def generate_ids(self, input_ids: Sequence[Sequence[int]], **kwargs: Any) -> List[List[int]]: ...
    def stream(self, prompt: str, **kwargs: Any) -> Stream: ...
    def encode(self, text: str) -> List[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
