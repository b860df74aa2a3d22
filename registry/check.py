"""``check``: run a merged version against the unmerged model its recipe describes, record
the result, and the gate that makes ``push`` and ``alias set`` require a passing one.

The inputs come through the usual road, ``produce.input_folder``: a version's folder, a
version kept as recipe only rebuilt by ``produce.produce_version`` (digest-checked) into a
scratch folder that is removed afterwards.  Everything is validated before any model loads,
and a check that does not finish records nothing; one that finishes is recorded whether it
passed or not."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from sqlmodel import Session, select

from lorareg.errors import LoraregError
from lorareg.registry import events, lookup, settings
from lorareg.registry import models as m
from lorareg.registry.context import Context
from lorareg.registry.recipe import Recipe, library_versions, lorareg_version
from lorareg.registry.refs import a_kind
from lorareg.registry.produce import input_folder
from lorareg.registry.results import CheckResult
from lorareg.registry.version_info import stored_recipe

Progress = Callable[[int, int, str], None] | None


def _validate(samples: int | None, max_new_tokens: int | None, device: str) -> None:
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise LoraregError(f"--samples must be at least 1, got {samples!r}", hint="e.g. --samples 8")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens < 1):
        raise LoraregError(f"--max-new-tokens must be at least 1, got {max_new_tokens!r}",
                           hint="e.g. --max-new-tokens 16, or leave it out to skip generation")
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LoraregError(f"{device!r} is not a torch device", hint="use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LoraregError(f"--device {device}: this machine has no CUDA device", hint="use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise LoraregError(f"--device {device}: MPS is not available here", hint="use --device cpu")


def _recipe(ctx: Context, ref: str) -> tuple[m.Version, Recipe]:
    with ctx.session() as session:
        row = lookup.resolve(session, ref)
        if row.kind != "merge":
            raise LoraregError(f"{lookup.ref_of(row)} is {a_kind(row.kind)}: there is nothing to compare it with",
                               hint="check a merged version (lorareg ls merges): it is compared with its base "
                                    "and adapters")
        recipe = stored_recipe(session, row)
    if not recipe.adapters:
        raise LoraregError(f"{lookup.ref_of(row)} has no adapters left in its recipe: it is its base",
                           hint="nothing to compare; check a version that merges adapters")
    return row, recipe


def check(ctx: Context, *, ref: str, prompts: Path | None = None, chat: bool = False, samples: int | None = None,
          max_new_tokens: int | None = None, seed: int = 0, device: str = "cpu",
          progress: Progress = None) -> CheckResult:
    from lorareg.merge.behaviour import check_behaviour
    from lorareg.merge.check_inputs import DEFAULT_SAMPLES, prompt_inputs, random_inputs, read_prompts
    from lorareg.merge.unmerged import Unmerged

    _validate(samples, max_new_tokens, device)
    if chat and prompts is None:
        raise LoraregError("--chat applies the chat template to prompts, and no --prompts FILE was given",
                           hint="pass --prompts FILE with one prompt per line, or drop --chat")
    row, recipe = _recipe(ctx, ref)
    ref = lookup.ref_of(row)
    prompt_list, prompts_sha = read_prompts(prompts) if prompts is not None else (None, None)
    with ExitStack() as stack:
        base = input_folder(ctx, recipe.base.ref, stack, digest=recipe.base.digest)
        adapters = tuple((input_folder(ctx, a.ref, stack, digest=a.digest), float(a.weight)) for a in recipe.adapters)
        candidate = input_folder(ctx, ref, stack, progress=progress)
        # the tokenizer the merged model ships with (an adapter output has none of its own here)
        text_side = candidate if recipe.output == "model" else base
        room = max_new_tokens or 0
        if prompt_list is not None:
            chosen = prompt_list[:samples] if samples else prompt_list
            inputs = prompt_inputs(text_side, chosen, sha256=prompts_sha, chat=chat, room=room,
                                   label=ref if recipe.output == "model" else recipe.base.ref)
        else:
            inputs = random_inputs(text_side, samples=samples or DEFAULT_SAMPLES, seed=seed, room=room)
        unmerged = Unmerged(base=base, adapters=adapters, method=recipe.method, params=dict(recipe.params),
                            seed=recipe.seed, adapter_dtype=recipe.adapter_dtype)
        b = check_behaviour(candidate=candidate, output=recipe.output, dtype=recipe.dtype, unmerged=unmerged,
                            inputs=inputs, max_new_tokens=max_new_tokens, device=device, progress=progress)
    numbers = {
        "compared": b.compared, "outputs": b.outputs, "factor": b.factor, "positions": b.positions,
        "chat": chat, "max_new_tokens": max_new_tokens, "device": device, "failures": list(b.failures),
        "adapter_error": b.adapter_error,
        "rounding": {"baseline": b.baseline, "max_abs_diff": b.rounding.max_abs, "mean_abs_diff": b.rounding.mean_abs,
                     "top1_agreement": b.rounding.top1, "generation_agreement": b.rounding.generation},
        "top1_decisive": {"positions": b.decisive_positions, "merged": b.merged.top1_decisive,
                          "rounding": b.rounding.top1_decisive},
    }
    versions = {**library_versions(), "lorareg": lorareg_version()}
    with ctx.session() as session:
        rec = m.Check(version_id=row.id, passed=b.passed, reference=b.reference, dtype=b.dtype,
                      max_abs_diff=b.merged.max_abs, mean_abs_diff=b.merged.mean_abs, tolerance=b.tolerance,
                      top1_agreement=b.merged.top1, generation_agreement=b.merged.generation,
                      seed=inputs.seed, prompts_sha256=inputs.prompts_sha256, samples=len(inputs.sequences),
                      numbers_json=events.dumps(numbers), versions_json=events.dumps(versions),
                      checked_by=events.current_user())
        session.add(rec)
        session.flush()
        events.record(session, "check", ref=ref, version_id=row.id, check=rec.id, passed=b.passed,
                      reference=b.reference, max_abs_diff=b.merged.max_abs, tolerance=b.tolerance)
        session.commit()
        return result_of(rec, ref)


def result_of(rec: m.Check, ref: str) -> CheckResult:
    numbers = json.loads(rec.numbers_json or "{}")
    return CheckResult(
        id=rec.id, ref=ref, passed=rec.passed, reference=rec.reference, compared=numbers.get("compared", ""),
        dtype=rec.dtype, outputs=numbers.get("outputs", "logits"), max_abs_diff=rec.max_abs_diff,
        mean_abs_diff=rec.mean_abs_diff, tolerance=rec.tolerance, factor=numbers.get("factor", 0.0),
        top1_agreement=rec.top1_agreement, generation_agreement=rec.generation_agreement,
        rounding=numbers.get("rounding", {}), samples=rec.samples, seed=rec.seed, prompts_sha256=rec.prompts_sha256,
        chat=bool(numbers.get("chat")), max_new_tokens=numbers.get("max_new_tokens"),
        positions=numbers.get("positions", 0), device=numbers.get("device", "cpu"), checked_at=rec.checked_at,
        checked_by=rec.checked_by, versions=json.loads(rec.versions_json or "{}"),
        failures=tuple(numbers.get("failures", ())), adapter_error=numbers.get("adapter_error"),
        top1_decisive=numbers.get("top1_decisive", {}))


def check_rows(session: Session, version_id: int) -> list[m.Check]:
    """A version's checks, oldest first."""
    return list(session.exec(select(m.Check).where(m.Check.version_id == version_id).order_by(m.Check.id)).all())


_SUMMARY = ("id", "passed", "reference", "dtype", "max_abs_diff", "mean_abs_diff", "tolerance", "top1_agreement",
            "generation_agreement", "samples", "seed", "prompts_sha256", "checked_at", "checked_by")


def check_summaries(session: Session, row: m.Version) -> list[dict]:
    """What ``show`` lists of each check (plain JSON values), oldest first."""
    ref = lookup.ref_of(row)
    return [{k: v for k, v in result_of(c, ref).to_dict().items() if k in _SUMMARY}
            for c in check_rows(session, row.id)]


def checks(ctx: Context, *, ref: str) -> list[CheckResult]:
    """Every recorded check of ``ref``, oldest first."""
    with ctx.session() as session:
        row = lookup.resolve(session, ref)
        return [result_of(c, lookup.ref_of(row)) for c in check_rows(session, row.id)]


def latest_passing(session: Session, version_id: int) -> m.Check | None:
    return session.exec(select(m.Check).where(m.Check.version_id == version_id, m.Check.passed == True)  # noqa: E712
                        .order_by(m.Check.id.desc())).first()


def require_check(session: Session, row: m.Version, *, require: bool | None, action: str) -> None:
    """The release gate: refuse ``action`` for a merge whose latest check did not pass.

    ``require`` True or False is the command's own ``--require-check`` / ``--no-require-check``;
    None follows the registry's ``require-check`` setting.  Only merges are checked, so the
    setting lets bases and adapters through, while asking for it on one is an error."""
    ref = lookup.ref_of(row)
    if require is None:
        require = settings.is_on(session, "require-check")
        if row.kind != "merge":
            return
    if not require:
        return
    if row.kind != "merge":
        raise LoraregError(f"{ref} is {a_kind(row.kind)}: only merged versions are checked",
                           hint="drop --require-check for it")
    rows = check_rows(session, row.id)
    if not rows:
        raise LoraregError(f"{ref} has no check, and {action} requires a passing one",
                           hint=f"run: lorareg check {ref}")
    latest = rows[-1]
    if not latest.passed:
        raise LoraregError(f"{ref}'s latest check failed (max |difference| {latest.max_abs_diff:.3g}, tolerance "
                           f"{latest.tolerance:.3g}), and {action} requires a passing one",
                           hint=f"see: lorareg show {ref}; rebuild it (lorareg rebuild {ref}), then run: "
                                f"lorareg check {ref}")
