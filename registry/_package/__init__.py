"""lorareg: a registry and merge engine for LoRA adapters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lorareg.errors import LoraregError

if TYPE_CHECKING:
    from lorareg.registry.api import Registry

__all__ = ["LoraregError", "Registry"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `lorareg --help` does not pay for SQLModel's import.
    if name == "Registry":
        from lorareg.registry.api import Registry

        return Registry
    raise AttributeError(name)
