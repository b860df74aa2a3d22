"""The one pickle policy: which weight files are pickles.

Loading a pickle can run code, so lorareg refuses pickle weights unless asked
(``--allow-pickle``), and then converts them to safetensors without running code
(``lorareg.merge.pickle_convert``).  Everything that asks "is this a pickle?" asks here: the
digest of a folder, the merge's readers, the files a merge copies, the Hub download filter.
No torch.
"""

from __future__ import annotations

__all__ = ["HUB_PICKLE_PATTERNS", "PICKLE_SUFFIXES", "is_pickle"]

# torch.save / pickle files: pytorch_model.bin, adapter_model.bin, model.pt, *.pth, *.ckpt, *.pkl.
# "pytorch_model.bin.index.json" is JSON; the shards it names are pickles.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# The same suffixes as glob patterns for huggingface_hub's allow_patterns/ignore_patterns.
# A tuple, so nobody appends to the policy: pass list(HUB_PICKLE_PATTERNS) where a list is needed.
HUB_PICKLE_PATTERNS = tuple(f"*{suffix}" for suffix in PICKLE_SUFFIXES)


def is_pickle(name: str) -> bool:
    """Whether a file name (or relative path) is a pickle by its suffix, in any case."""
    return name.lower().endswith(PICKLE_SUFFIXES)
