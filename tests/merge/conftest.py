"""Session-built tiny bases for the merge engine tests (built once, shared read-only)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from tests.support.factories import make_lora

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.fixture(autouse=True)
def _quiet_peft():
    # PEFT warns about tied embeddings, fan_in_fan_out and friends on purpose; the tests
    # assert on the behaviour instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="session")
def merge_models(tmp_path_factory):
    """``merge_models(kind, dtype_name)`` -> base folder, built on first use."""
    from tests.support import factories

    root: Path = tmp_path_factory.mktemp("merge-bases")
    cache: dict[tuple[str, str], Path] = {}
    builders = {
        "llama": factories.make_llama,
        "llama_bias": lambda dest, dtype: factories.make_llama(
            dest, dtype=dtype, attention_bias=True, mlp_bias=True
        ),
        "gpt2": factories.make_gpt2,
        "qwen2": factories.make_qwen2,
        "bert": factories.make_bert,
    }

    def get(kind: str, dtype: str = "float32") -> Path:
        if kind == "minilm":
            return factories.minilm_path()
        if (kind, dtype) not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[kind, dtype] = builders[kind](root / f"{kind}-{dtype}", dtype=DTYPES[dtype])
        return cache[kind, dtype]

    return get


@pytest.fixture(scope="session")
def llama_bf16(merge_models):
    return merge_models("llama", "bfloat16")


@pytest.fixture(scope="session")
def lora_a(llama_bf16, tmp_path_factory):
    return make_lora(llama_bf16, tmp_path_factory.mktemp("a") / "a", seed=1)


@pytest.fixture(scope="session")
def lora_b(llama_bf16, tmp_path_factory):
    return make_lora(llama_bf16, tmp_path_factory.mktemp("b") / "b", seed=2, r=2, lora_alpha=4,
                     target_modules=["q_proj", "v_proj", "down_proj"])
