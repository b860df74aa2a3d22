"""`Registry.check` through the registry: inputs come through the usual roads, every finished
check is recorded with what it ran, bad input records nothing, and the release gate refuses
a merge without a passing latest check, then allows it."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from lorareg.errors import IntegrityError, LoraregError
from lorareg.merge.behaviour import FACTOR

SMALL = {"samples": 2}  # tiny models: two drawn sequences are plenty, and keep the suite fast


def _check_events(reg, ref: str) -> list:
    return [e for e in reg.log(ref=ref) if e.action == "check"]


def test_single_adapter_bf16_merge_passes_and_is_recorded(seeded):
    seeded.merge(base="llama", adapters=["chat"], name="assistant", dtype="bfloat16")
    res = seeded.check(ref="assistant", **SMALL)
    assert res.passed and res.ref == "assistant@1" and res.dtype == "bfloat16"
    assert res.reference == "peft-unmerged" and res.failures == ()
    assert res.max_abs_diff <= res.tolerance == pytest.approx(FACTOR * res.rounding["max_abs_diff"])
    # recorded: what it ran, on what, with which libraries, by whom
    assert (res.seed, res.samples, res.prompts_sha256, res.max_new_tokens, res.device) == (0, 2, None, None, "cpu")
    assert res.versions["torch"] == torch.__version__ and {"peft", "transformers", "lorareg"} <= set(res.versions)
    assert res.checked_by and res.checked_at is not None
    assert seeded.checks(ref="assistant") == [res]
    assert seeded.get(ref="assistant").details["checks"][0]["passed"] is True
    (event,) = _check_events(seeded, "assistant")
    assert event.args["passed"] is True and event.args["check"] == res.id
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.passed = False  # type: ignore[misc]
    assert json.loads(json.dumps(res.to_dict()))["ref"] == "assistant@1"


def test_weighted_two_adapter_merge_passes_on_prompts(seeded, tmp_path):
    seeded.merge(base="llama", adapters=["chat", ("code", 0.5)], name="assistant", dtype="bfloat16")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w5 w6 w7 w8\n\nw9 w10 w11\nw12\n")
    res = seeded.check(ref="assistant", prompts=prompts, samples=2, max_new_tokens=4)
    assert res.passed, res.failures
    assert res.samples == 2 and res.seed is None and res.positions == 4 + 3
    assert res.prompts_sha256 == hashlib.sha256(prompts.read_bytes()).hexdigest()
    assert res.generation_agreement is not None and res.rounding["generation_agreement"] is not None


def _tamper(reg, ref: str) -> str:
    """Flip one bit of a byte of a merged weight in the stored file, then re-hash it into the store
    and the file rows, so that `verify` finds nothing wrong.  Returns the tensor's name."""
    from safetensors import safe_open

    from lorareg.registry import lookup
    from lorareg.registry import models as m

    ctx = reg._ctx
    info = reg.get(ref=ref)
    path = info.path / "model.safetensors"
    with safe_open(path, framework="pt") as f:
        name = "model.layers.0.mlp.down_proj.weight"
        t = f.get_tensor(name)
        header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
        start = json.loads(path.read_bytes()[8:header])[name]["data_offsets"][0]
    # bf16, little-endian: the high byte is the sign and the top 7 exponent bits; 0x02 in it
    # adds 4 to the exponent.  The largest value where that bit is clear becomes 16x larger.
    raw = t.view(torch.int16).flatten()
    index = next(i for i in t.float().abs().flatten().argsort(descending=True).tolist() if not int(raw[i]) & 0x0200)
    data = bytearray(path.read_bytes())
    data[header + start + 2 * index + 1] ^= 0x02
    tampered = ctx.home.tmp / "tampered.safetensors"
    tampered.write_bytes(bytes(data))
    blob = ctx.blobs.put_file(tampered, move=True)
    with ctx.session() as session:
        row = lookup.resolve(session, ref)
        frow = session.get(m.FileRow, (row.id, "model.safetensors"))
        frow.sha256, frow.size = blob.sha256, blob.size
        session.add(frow)
        session.commit()
    import shutil

    shutil.rmtree(info.path)  # the link folder is rebuilt from the rows
    return name


def _independent_numbers(reg, llama, llama_lora, ref: str, samples: int) -> tuple[float, float]:
    """max |merged - float32 PEFT| and max |bf16 PEFT - float32 PEFT| over the check's inputs,
    computed here with transformers and PEFT directly."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorareg.merge.check_inputs import random_inputs

    folder = reg.folder(ref=ref)
    inputs = random_inputs(folder, samples=samples, seed=0)

    def logits(model):
        with torch.no_grad():
            return [model(input_ids=torch.tensor([s])).logits[0].double() for s in inputs.sequences]

    ref32 = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32),
                                             llama_lora).eval())
    low = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama, dtype=torch.bfloat16),
                                           llama_lora).eval())
    merged = logits(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval())
    worst = max(float((a - b).abs().max()) for a, b in zip(merged, ref32))
    rounding = max(float((a - b).abs().max()) for a, b in zip(low, ref32))
    return worst, rounding


def test_altered_weight_fails_with_the_right_numbers(seeded, llama, llama_lora):
    seeded.merge(base="llama", adapters=["chat"], name="assistant", dtype="bfloat16")
    assert seeded.check(ref="assistant", **SMALL).passed
    _tamper(seeded, "assistant@1")
    assert all(v.ok for v in seeded.verify(ref="assistant@1"))  # re-hashed: verify cannot see it
    res = seeded.check(ref="assistant", **SMALL)
    assert not res.passed
    worst, rounding = _independent_numbers(seeded, llama, llama_lora, "assistant@1", 2)
    assert res.max_abs_diff == pytest.approx(worst, rel=1e-9)
    assert res.tolerance == pytest.approx(FACTOR * rounding, rel=1e-9)
    assert res.max_abs_diff > 5 * res.tolerance  # a wide margin
    assert f"{res.max_abs_diff / res.tolerance:.3g}x the tolerance" in res.failures[0]
    # both checks are recorded; the gate reads the latest, which failed
    assert [c.passed for c in seeded.checks(ref="assistant")] == [True, False]
    with pytest.raises(LoraregError, match="latest check failed") as err:
        seeded.set_alias(name="assistant", alias="prod", version=1, require_check=True)
    assert "lorareg check assistant@1" in err.value.hint


def test_recipe_only_version_is_rebuilt_digest_checked_and_stays_recipe_only(seeded):
    from lorareg.registry import lookup

    seeded.merge(base="llama", adapters=["chat"], name="assistant", dtype="float16", keep="recipe")
    res = seeded.check(ref="assistant", **SMALL)
    assert res.passed and res.dtype == "float16"
    assert seeded.get(ref="assistant").stored is False
    assert not any(seeded.location().home.joinpath("tmp").glob("merge-*"))  # the rebuild was discarded
    with seeded._ctx.session() as session:  # a recorded digest the rebuild cannot reproduce
        row = lookup.resolve(session, "assistant@1")
        row.digest = "sha256:" + "0" * 64
        session.add(row)
        session.commit()
    with pytest.raises(IntegrityError, match="not the recorded"):
        seeded.check(ref="assistant", **SMALL)
    assert len(seeded.checks(ref="assistant")) == 1


def _bad_cases(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    prompts = tmp_path / "p.txt"
    prompts.write_text("w5 w6\n")
    cases = {
        "a base": ({"ref": "llama"}, "is a base: there is nothing to compare"),
        "an adapter": ({"ref": "chat"}, "is an adapter: there is nothing to compare"),
        "samples 0": ({"samples": 0}, "--samples must be at least 1"),
        "no prompts file": ({"prompts": tmp_path / "missing.txt"}, "does not exist"),
        "empty prompts file": ({"prompts": empty}, "is empty"),
        "chat without a template": ({"prompts": prompts, "chat": True}, "has no chat template"),
        "chat without prompts": ({"chat": True}, "no --prompts FILE"),
        "max new tokens 0": ({"max_new_tokens": 0}, "--max-new-tokens must be at least 1"),
        "not a device": ({"device": "gpu-please"}, "is not a torch device"),
    }
    if not torch.cuda.is_available():
        cases["no cuda here"] = ({"device": "cuda"}, "no CUDA device")
    return cases


def test_bad_input_is_one_error_and_records_nothing(seeded, tmp_path):
    seeded.merge(base="llama", adapters=["chat"], name="assistant", dtype="bfloat16")
    for label, (kwargs, message) in _bad_cases(tmp_path).items():
        with pytest.raises(LoraregError, match=message) as err:
            seeded.check(**{"ref": "assistant", **kwargs})
        assert err.value.hint, label
        assert "\n" not in str(err.value), label
    assert seeded.checks(ref="assistant") == [] and _check_events(seeded, "assistant") == []


def test_gate_refuses_then_allows_and_the_card_cites_the_check(seeded, hub, monkeypatch, tmp_path):
    from huggingface_hub import hf_hub_download

    from tests.support.hub_state import ALICE

    monkeypatch.setenv("HF_TOKEN", ALICE)
    seeded.merge(base="llama", adapters=["chat"], name="assistant", dtype="bfloat16")
    assert seeded.set_setting(key="require-check", value="yes") == "true"
    with pytest.raises(LoraregError, match="has no check, and push requires a passing one") as err:
        seeded.push(ref="assistant", repo="alice/assistant")
    assert err.value.hint == "run: lorareg check assistant@1"
    assert hub.requests("POST", "/commit/") == []  # refused before anything was uploaded
    with pytest.raises(LoraregError, match="has no check"):
        seeded.set_alias(name="assistant", alias="prod", version=1)
    assert seeded.aliases(name="assistant") == []
    # an adapter has nothing to check: the setting lets it through, asking for a check is an error
    assert seeded.set_alias(name="chat", alias="prod", version=1).version == 1
    with pytest.raises(LoraregError, match="only merged versions are checked"):
        seeded.set_alias(name="chat", alias="prod", version=1, require_check=True)

    res = seeded.check(ref="assistant", **SMALL)
    assert seeded.set_alias(name="assistant", alias="prod", version=1).version == 1
    pushed = seeded.push(ref="assistant", repo="alice/assistant")
    card = open(hf_hub_download("alice/assistant", "README.md", revision=pushed.tag, endpoint=hub.url, token=ALICE,
                                cache_dir=tmp_path / "cache")).read()
    assert "## Check" in card and "`lorareg check` passed on" in card
    assert f"at most {res.max_abs_diff:.3g}" in card and f"the tolerance is {res.tolerance:.3g}" in card
    assert "seed 0" in card and f"torch {torch.__version__}" in card


def test_explicit_no_require_check_overrides_the_setting(seeded):
    seeded.merge(base="llama", adapters=["chat"], name="assistant", dtype="bfloat16")
    seeded.set_setting(key="require-check", value=True)
    assert seeded.set_alias(name="assistant", alias="prod", version=1, require_check=False).version == 1
    seeded.set_setting(key="require-check", value="false")
    with pytest.raises(LoraregError, match="has no check"):
        seeded.set_alias(name="assistant", alias="prod", version=1, require_check=True)


def test_settings_are_typed_and_logged(reg):
    assert reg.settings() == {"require-check": "false"} and reg.get_setting(key="require-check") == "false"
    assert reg.set_setting(key="require-check", value="ON") == "true"
    assert reg.get_setting(key="require-check") == "true"
    with pytest.raises(LoraregError, match="not true or false"):
        reg.set_setting(key="require-check", value="maybe")
    with pytest.raises(LoraregError, match="unknown setting"):
        reg.get_setting(key="require-checks")
    (event,) = [e for e in reg.log() if e.action == "config"]
    assert event.args == {"key": "require-check", "value": "true", "previous": None}


def test_non_finite_numbers_are_strict_json():
    from datetime import datetime, timezone

    from lorareg import CheckResult

    res = CheckResult(id=1, ref="a@1", passed=False, reference="peft-unmerged", compared="the merged model",
                      dtype="float16", outputs="logits", max_abs_diff=float("inf"), mean_abs_diff=float("nan"),
                      tolerance=0.01, factor=FACTOR, top1_agreement=0.5, generation_agreement=None,
                      rounding={"max_abs_diff": 0.0025}, samples=1, seed=0, prompts_sha256=None, chat=False,
                      max_new_tokens=None, positions=8, device="cpu", checked_at=datetime.now(timezone.utc),
                      checked_by="me")
    out = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert (out["max_abs_diff"], out["mean_abs_diff"], out["tolerance"]) == ("inf", "nan", 0.01)
