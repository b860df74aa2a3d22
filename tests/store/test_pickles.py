"""The one pickle policy: suffixes, the name check and the Hub patterns agree."""

from __future__ import annotations

from fnmatch import fnmatch

import pytest

from lorareg.store.pickles import HUB_PICKLE_PATTERNS, PICKLE_SUFFIXES, is_pickle

PICKLES = ["pytorch_model.bin", "adapter_model.bin", "model.pt", "weights.pth", "last.ckpt", "state.pkl",
           "pytorch_model-00001-of-00002.bin", "sub/dir/model.pt", "MODEL.BIN"]
NOT_PICKLES = ["model.safetensors", "pytorch_model.bin.index.json", "config.json", "tokenizer.model",
               "tf_model.h5", "flax_model.msgpack", "model.gguf", "binary", "model.pt.lock", "bin", ""]


def test_the_policy():
    assert PICKLE_SUFFIXES == (".bin", ".pt", ".pth", ".ckpt", ".pkl")
    assert HUB_PICKLE_PATTERNS == ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


@pytest.mark.parametrize("name", PICKLES + NOT_PICKLES)
def test_is_pickle_and_hub_patterns_agree(name):
    assert is_pickle(name) == (name in PICKLES)
    # huggingface_hub matches allow_patterns with fnmatch on the repo path (case-sensitive there)
    assert any(fnmatch(name.lower(), pattern) for pattern in HUB_PICKLE_PATTERNS) == (name in PICKLES)
