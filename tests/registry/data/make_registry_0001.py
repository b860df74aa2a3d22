"""How registry-0001.tar.gz was made: a registry written by lorareg at commit 4942657 (alembic
revision 0001, recipes as flat dicts), for tests/registry/test_upgrade_0001.py.

Run with that commit's lorareg importable and its tests/ folder on PYTHONPATH (factories.py
lived there), then pack ``home`` and ``expected.json`` (drop home/tmp first):

    PYTHONPATH=tests python make_registry_0001.py OUT && tar czf registry-0001.tar.gz -C OUT home expected.json
"""
import json, sys, shutil
from pathlib import Path

import torch
from factories import make_llama, make_lora
from lorareg import Registry
work = Path(sys.argv[1]); shutil.rmtree(work, ignore_errors=True); work.mkdir()
src = work / "src"
base = make_llama(src / "tiny", dtype=torch.bfloat16)
a1 = make_lora(base, src / "chat", seed=1)
a2 = make_lora(base, src / "code", seed=2, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
a3 = make_lora(base, src / "math", seed=3, use_rslora=True)
home = work / "home"
reg = Registry.open(home)
reg.add_base(path=base, name="tiny")
for p, n in ((a1, "chat"), (a2, "code"), (a3, "math")):
    reg.add_adapter(path=p, base="tiny", name=n)
m1 = reg.merge(base="tiny", adapters=["chat", "code:0.5"], name="assistant", message="two skills")
m2 = reg.merge(base="tiny", adapters=["chat", "code", "math:0.7"], name="assistant", method="dare_ties", density=0.5, seed=7)
m3 = reg.merge(base="tiny", adapters=["chat:0.8"], name="recipe-only", keep="recipe")
m4 = reg.rollback(ref="assistant@1", adapter="code", message="code regressed")
m5 = reg.rollback(ref="assistant@1", adapter="chat", strategy="subtract")
m6 = reg.merge(base="tiny", adapters=["chat", "code:0.5"], name="combo", as_adapter="cat")
m7 = reg.merge(base="tiny", adapters=["chat", "math"], name="pruned", method="ties", density=0.3, majority_sign_method="frequency")
reg.set_alias(name="assistant", alias="prod", version=1)
reg.log_metrics(ref="assistant@1", metrics={"eval_loss": 1.5}, step=10)
reg.set_tags(ref="assistant@1", tags={"stage": "candidate"})
reg.log_params(ref="assistant@1", params={"lr": 0.001})
out = {}
for i in reg.ls():
    d = {"digest": i.digest, "kind": i.kind, "stored": i.stored, "files": {f.path: f.sha256 for f in i.files}}
    full = reg.get(i.ref)
    d["files"] = {f.path: f.sha256 for f in full.files}
    if i.kind == "merge":
        d["recipe_digest"] = full.details["recipe_digest"]
    out[i.ref] = d
reg.close()
(work / "expected.json").write_text(json.dumps(out, indent=1, sort_keys=True))
print(json.dumps({k: (v["digest"][:20], v["stored"]) for k, v in out.items()}, indent=0))
