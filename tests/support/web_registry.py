"""A small registry with everything the web view shows, for its route and browser tests:
three adapters, a merge rolled back twice (merge -> rollback (rebuild) -> rollback (subtract),
a three-step chain), a ties merge, a recipe-only merge, metrics over steps, params, tags,
alias moves with a rollback, a Hub push, and hostile text wherever a person can type it."""

from __future__ import annotations

import shutil
from pathlib import Path

# Text a user can put in tags, messages, params and model cards; it must show as text.
XSS = '<script>window.__pwned=1</script>"><img src=x onerror="window.__pwned=2">'
SECRET = "hf_SeCrEtT0kenNeverShown1234"


def build(home: Path, *, llama: Path, lora1: Path, lora2: Path, work: Path, check: bool = False) -> None:
    """``check``: also record a real ``lorareg check`` of asst@1 (a few seconds of model runs)."""
    from sqlmodel import select

    from lorareg import Registry
    from lorareg.registry import models as m
    from tests.support.factories import make_lora

    lora3 = make_lora(llama, work / "math-lora", seed=3, use_rslora=True)
    carded = work / "carded-lora"
    shutil.copytree(lora1, carded)
    (carded / "README.md").write_text(f"# my adapter\n\n{XSS}\n\nsee https://user:{SECRET}@example.org\n")
    with Registry.open(home=home) as reg:
        reg.add_base(path=llama, name="llama")
        reg.add_adapter(path=lora1, base="llama", name="chat")
        reg.add_adapter(path=lora2, base="llama", name="code")
        reg.add_adapter(path=lora3, base="llama", name="math")
        reg.add_adapter(path=carded, base="llama", name="carded")
        reg.merge(base="llama", adapters=["chat", ("code", 0.5), ("math", 0.7)], name="asst", message=f"three {XSS}")
        reg.rollback_adapter(ref="asst@1", adapter="code", message="code regressed")
        reg.rollback_adapter(ref="asst@2", adapter="math", strategy="subtract")
        reg.merge(base="llama", adapters=["chat", "code"], name="tied", method="ties", params={"density": 0.5}, seed=7)
        reg.merge(base="llama", adapters=["chat"], name="lean", keep="recipe")
        if check:
            reg.check(ref="asst@1", samples=2)
        for step in range(1, 21):
            reg.log_metrics(ref="chat", metrics={"loss": 2.0 / step + 0.1, "eval_acc": 0.5 + step / 100},
                            step=step * 10)
        reg.log_metrics(ref="code", metrics={"loss": 0.9}, step=100)
        reg.log_params(ref="chat", params={"lr": 2e-4, "epochs": 3, "note": XSS, XSS: 1})
        reg.set_tags(ref="asst@3", tags={"stage": XSS, XSS: "key", "team": "nlp"})
        reg.set_tags(ref="code", tags={"stage": "candidate"})
        reg.set_alias(name="asst", alias="prod", version=1)
        reg.set_alias(name="asst", alias="prod", version=3)
        reg.rollback_alias(name="asst", to=2, alias="prod", message=f"v3 broke {XSS}")
        # No road writes a push but a real upload; the row is what one leaves, with an endpoint
        # that carries a credential (as a mistyped HF_ENDPOINT would).
        with reg._ctx.session() as session:
            row = session.exec(select(m.Version).where(m.Version.name == "asst", m.Version.version == 2)).one()
            session.add(m.HubPush(version_id=row.id, repo_id="acme/asst", endpoint=f"https://bot:{SECRET}@hub.example",
                                  branch="main", tag="v2", commit_sha="0123456789abcdef0123456789abcdef01234567"))
            session.commit()
