"""Shared fixtures: every test gets its own LORAREG_HOME; tiny models are built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.postgres import pg_server, pg_url  # noqa: F401  (PostgreSQL: one server a session, a database a test)
from tests.support.seaweed import s3_bucket, s3_server  # noqa: F401  (SeaweedFS S3: one server a session, a bucket a test)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def lorareg_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "lorareg-home"
    monkeypatch.setenv("LORAREG_HOME", str(home))
    monkeypatch.delenv("LORAREG_DATABASE_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def llama(models_dir) -> Path:
    from tests.support.factories import make_llama

    return make_llama(models_dir / "llama")


@pytest.fixture(scope="session")
def llama_lora(models_dir, llama) -> Path:
    from tests.support.factories import make_lora

    return make_lora(llama, models_dir / "llama-lora", seed=1)


@pytest.fixture(scope="session")
def llama_lora2(models_dir, llama) -> Path:
    from tests.support.factories import make_lora

    return make_lora(llama, models_dir / "llama-lora2", seed=2, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="session")
def gpt2(models_dir) -> Path:
    from tests.support.factories import make_gpt2

    return make_gpt2(models_dir / "gpt2")


@pytest.fixture(scope="session")
def gpt2_lora(models_dir, gpt2) -> Path:
    from tests.support.factories import make_lora

    return make_lora(gpt2, models_dir / "gpt2-lora", seed=3, target_modules=["c_attn"], fan_in_fan_out=True)


@pytest.fixture
def reg(lorareg_home):
    from lorareg import Registry

    r = Registry.open()
    yield r
    r.close()


@pytest.fixture
def seeded(reg, llama, llama_lora, llama_lora2):
    """``reg`` holding llama@1 and two adapters trained on it, chat@1 and code@1."""
    reg.add_base(path=llama, name="llama")
    reg.add_adapter(path=llama_lora, base="llama", name="chat")
    reg.add_adapter(path=llama_lora2, base="llama", name="code")
    return reg


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running server; HF_ENDPOINT points at it, no token is found unless a test sets one."""
    from huggingface_hub import constants

    from tests.support.hub_server import HubServer

    # huggingface_hub read these at import time; patch the constants as well as the env.
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # hf-xet would ask the server for a xet token
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    # Whatever ignores HF_ENDPOINT and falls back to the import-time endpoint fails loudly.
    dead = "http://127.0.0.1:9"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server
