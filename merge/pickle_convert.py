"""Turn pickle weights into safetensors without running code (``torch.load(weights_only=True)``).

Only for folders the user explicitly allowed pickles for (``--allow-pickle``); which files are
pickles is decided in ``lorareg.store.pickles``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lorareg.errors import CheckpointError
from lorareg.store.pickles import is_pickle

__all__ = ["convert_pickle"]


def convert_pickle(folder: Path, pickles: list[Path], scratch: Path, *, out_name: str) -> Path:
    """Load pickle weights with ``weights_only=True`` (no code runs) and write one
    safetensors file ``out_name`` next to copies of the other files, in a new folder under
    ``scratch`` (``converted-<folder name>``, replaced if present); returns that folder.

    The caller removes the folder when done with it.
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors: dict[str, Any] = {}
    for p in pickles:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot load {p.name} with weights_only=True: {str(exc).splitlines()[0]}",
                                  hint="re-save the weights as safetensors") from exc
        if not isinstance(state, dict):
            raise CheckpointError(f"{p.name} does not hold a state dict", hint="re-save the weights as safetensors")
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().contiguous().clone()  # clone: tied tensors share storage
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / f"converted-{folder.name}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    for f in folder.iterdir():
        if f.is_file() and not is_pickle(f.name) and not f.name.endswith(".index.json"):
            shutil.copy2(f, out / f.name)
    save_file(tensors, str(out / out_name), metadata={"format": "pt"})
    return out
