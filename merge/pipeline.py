"""Hand a merge's output bytes to a background thread that writes and hashes them.

The engine reads and computes the next piece while this thread writes the previous one, so
the LoRA arithmetic and the sha256 passes overlap with the disk.  Bytes travel in reusable
``Slot``s: a slot handed to ``put`` belongs to the writer until the writer has written and
hashed it, and ``acquire`` hands it out again only after that, so no buffer is ever
overwritten while the writer still reads it.  The number of slots bounds the memory in
flight.  An error in the writer thread is re-raised in the caller at its next call.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from lorareg.merge.writer import ShardWriter

__all__ = ["Slot", "WritePipeline"]


class Slot:
    """A reusable buffer (``data``), plus whatever must stay alive until it is written."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.keep: Any = None  # e.g. a tensor whose bytes were handed over instead of ``data``
        self._free = threading.Event()
        self._free.set()

    def _release(self) -> None:
        self.keep = None
        self._free.set()


_STOP = object()


class WritePipeline:
    """Feeds a ``ShardWriter`` from a background thread, tensor by tensor, piece by piece."""

    def __init__(self, writer: ShardWriter) -> None:
        self._writer = writer
        # Unbounded: what is in flight is bounded by the slots, and begin/end markers are tiny.
        self._items: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="lorareg-writer", daemon=True)
        self._thread.start()

    # --- caller side ------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def acquire(self, slot: Slot) -> Slot:
        """``slot``, once the writer is done with what it last held (blocks until then)."""
        self._check()
        slot._free.wait()
        self._check()
        slot._free.clear()
        return slot

    def begin(self, name: str, nbytes: int) -> None:
        self._check()
        self._items.put(("begin", name, nbytes))

    def put(self, slot: Slot, data: Any) -> None:
        """Write ``data`` (a view into ``slot.data``, or of ``slot.keep``); the slot comes back after."""
        self._check()
        self._items.put(("data", slot, data))

    def end(self) -> None:
        self._check()
        self._items.put(("end",))

    def close(self) -> None:
        """Wait until everything queued is written; re-raise the writer's error, if any."""
        self._items.put(_STOP)
        self._thread.join()
        self._check()

    def abort(self) -> None:
        """Stop without writing what is still queued (the caller removes the output)."""
        self._aborted = True
        self._items.put(_STOP)
        self._thread.join()

    # --- writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._items.get()
            if item is _STOP:
                return
            try:
                if self._error is None and not self._aborted:
                    if item[0] == "begin":
                        self._writer.begin(item[1], item[2])
                    elif item[0] == "data":
                        self._writer.feed(item[2])
                    else:
                        self._writer.end()
            except BaseException as exc:  # handed to the caller; the thread keeps draining
                self._error = exc
            finally:
                if item[0] == "data":
                    item[1]._release()
                item = None  # holds a view of the slot's buffer
