"""torch's intra-op threads during a merge: the cores the hash threads leave, the caller's
setting restored after (merge/threads.py)."""

from __future__ import annotations

import pytest
import torch

from lorareg.merge import threads


@pytest.mark.parametrize(("cores", "before", "inside"), [(2, 2, 1), (1, 1, 1), (8, 4, 4), (8, 16, 6), (16, 3, 3)])
def test_arithmetic_gets_the_cores_the_pipeline_leaves(monkeypatch, cores, before, inside):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    saved = torch.get_num_threads()
    torch.set_num_threads(before)
    try:
        with threads.arithmetic_threads() as n:
            assert n == inside == torch.get_num_threads()
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(saved)


def test_the_setting_is_restored_when_the_merge_fails(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError), threads.arithmetic_threads():
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
