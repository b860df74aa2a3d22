"""The one error hierarchy.  Every error carries a one-line message and a hint that
names the next thing to do; ``cli/`` turns them into ``Error: ...`` and exit code 1."""

from __future__ import annotations


class LoraregError(Exception):
    """Base of every error lorareg raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotFoundError(LoraregError, LookupError):
    """A reference, path or blob that does not exist."""

    hint = "list what is registered with: lorareg ls"


class InvalidNameError(LoraregError, ValueError):
    hint = "names are lower case: [a-z0-9][a-z0-9._-]*"


class CheckpointError(LoraregError, ValueError):
    """A folder or file that is not a usable checkpoint (missing, corrupt, lying header)."""


class PickleRefusedError(CheckpointError):
    hint = "convert it to safetensors, or pass --allow-pickle to load it with weights_only=True"


class IncompatibleAdapterError(LoraregError, ValueError):
    """An adapter whose modules or shapes do not fit the base."""


class UnsupportedFeatureError(LoraregError, ValueError):
    """Something PEFT can load that lorareg cannot merge exactly; refused, never approximated."""


class IntegrityError(LoraregError):
    """Bytes that do not hash to what was recorded."""

    hint = "run: lorareg verify --all"


class SchemaError(LoraregError):
    """A database written by a newer lorareg, or one that cannot be migrated."""

    hint = "upgrade lorareg (pip install -U lorareg) or point LORAREG_HOME elsewhere"


class HubError(LoraregError):
    """A Hugging Face Hub operation that failed."""


class MergeError(LoraregError, ValueError):
    """A merge request that cannot be carried out as asked."""


class LeaseLostError(LoraregError):
    """A writer whose lease lapsed (it was paused, or cut off from the database) and whose
    pending blobs a gc may have removed: its rows are not committed."""

    hint = "nothing was registered; run the command again (LORAREG_LEASE_SECONDS sets the lease length)"


class InvalidDigestError(LoraregError, ValueError):
    """A string that is not a sha256 digest where one is required."""

    hint = "a sha256 digest is 64 hex characters, optionally prefixed with sha256:"


class ObjectStoreError(LoraregError):
    """An S3-compatible object store that cannot be reached, refuses the credentials, or lacks the bucket."""
