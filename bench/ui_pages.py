"""How `lorareg ui` pages scale: time to first byte and full load of the versions page and of a
version page, on registries of 1,000 and 100,000 versions, measured in a real headless
Chromium against `lorareg ui` serving each registry (Navigation Timing: TTFB = responseStart -
requestStart; full load = loadEventEnd - startTime, CSS and JS included).  Also, in-process,
how many SQL statements each page runs (SQLAlchemy's before_cursor_execute event), which
says whether a page's cost is per row.

    .venv/bin/python -m bench.ui_pages [--sizes 1000,100000] [--repeat 5] [--workdir bench/_work/ui]

How the registries are made:
- 1,000: through the API only.  A tiny Llama base (tests/support/factories.make_llama) is
  registered with Registry.add_base; one tiny PEFT adapter folder (make_lora) is registered
  990 times under names a00000...a00989 with Registry.add_adapter (same bytes, new names: each
  call hashes, checks the fit and registers); 9 merges of two adapters each with
  Registry.merge; every adapter gets a metric `loss` (Registry.log_metrics, step 100) and
  every tenth a tag (Registry.set_tags).
- 100,000: a copy of the 1,000 registry, then 99,000 more adapter versions written in
  batches of 5,000 by SQLAlchemy Core INSERTs into the registry's own tables
  (registry/models.py: artifacts, versions, adapters, files, metrics, tags, events), each
  row a copy of the rows Registry.add_adapter wrote for a00000 with only the name
  (b000000...), the ids, the time and the metric value changed.  100,000 calls of
  add_adapter would take hours on this machine (~0.15 s each); the rows are the same ones.

Prints, per page and size, the median TTFB and full load in ms and the 100,000 / 1,000
ratio, then the statement counts.  The pages show 50 versions; a ratio near 1 means a page's
cost does not grow with the registry."""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

PAGES = [("versions, first page", "/versions"),
         ("versions, last page", "/versions?offset={last}"),
         ("versions by metric", "/versions?sort=metric:loss&desc=1"),
         ("versions, name filter", "/versions?q=a0009"),
         ("version page (adapter)", "/v/a00007"),
         ("version page (base)", "/v/llama"),
         ("version page (merge)", "/v/m3"),
         ("overview", "/")]


def build_small(home: Path, work: Path, n: int) -> None:
    from lorareg import Registry
    from tests.support.factories import make_llama, make_lora

    base = make_llama(work / "llama")
    adapter = make_lora(base, work / "lora", seed=1, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    merges = 9
    with Registry.open(home=home) as reg:
        reg.add_base(path=base, name="llama")
        for i in range(n - 1 - merges):
            ref = reg.add_adapter(path=adapter, base="llama", name=f"a{i:05d}").ref
            reg.log_metrics(ref=ref, metrics={"loss": round(random.Random(i).uniform(0.2, 2.0), 4)}, step=100)
            if i % 10 == 0:
                reg.set_tags(ref=ref, tags={"stage": "candidate"})
        for j in range(merges):
            reg.merge(base="llama", adapters=[f"a{2 * j:05d}", (f"a{2 * j + 1:05d}", 0.5)], name=f"m{j}")


def grow(home: Path, total: int, batch: int = 5000) -> None:
    """Copies of a00000's rows until the registry holds ``total`` versions (see the docstring)."""
    from sqlalchemy import func, insert
    from sqlmodel import select

    from lorareg import Registry
    from lorareg.registry import models as mdl

    def row_dict(obj) -> dict:
        return {c.name: getattr(obj, c.name) for c in type(obj).__table__.columns}

    with Registry.open(home=home) as reg, reg._ctx.session() as s:
        tmpl = s.exec(select(mdl.Version).where(mdl.Version.name == "a00000")).one()
        t_art, t_ad = s.get(mdl.Artifact, "a00000"), s.get(mdl.Adapter, tmpl.id)
        t_files = s.exec(select(mdl.FileRow).where(mdl.FileRow.version_id == tmpl.id)).all()
        t_event = s.exec(select(mdl.Event).where(mdl.Event.version_id == tmpl.id)).first()
        have = s.exec(select(func.count()).select_from(mdl.Version)).one()
        next_id = s.exec(select(func.max(mdl.Version.id))).one() + 1
        t0 = datetime.now(timezone.utc)
        rng = random.Random(0)
        for start in range(0, total - have, batch):
            arts, vers, ads, files, mets, tags, evs = [], [], [], [], [], [], []
            for k in range(start, min(start + batch, total - have)):
                vid, name = next_id + k, f"b{k:06d}"
                when = t0 + timedelta(milliseconds=k)
                arts.append({**row_dict(t_art), "name": name, "created_at": when})
                vers.append({**row_dict(tmpl), "id": vid, "name": name, "created_at": when})
                ads.append({**row_dict(t_ad), "version_id": vid})
                files += [{**row_dict(f), "version_id": vid} for f in t_files]
                mets.append({"version_id": vid, "key": "loss", "value": round(rng.uniform(0.2, 2.0), 4), "step": 100,
                             "time": when})
                if k % 10 == 0:
                    tags.append({"version_id": vid, "key": "stage", "value": "candidate"})
                if t_event is not None:
                    ev = row_dict(t_event)
                    ev.pop("id")
                    evs.append({**ev, "version_id": vid, "ref": f"{name}@1", "time": when})
            for model, rows in ((mdl.Artifact, arts), (mdl.Version, vers), (mdl.Adapter, ads), (mdl.FileRow, files),
                                (mdl.Metric, mets), (mdl.Tag, tags), (mdl.Event, evs)):
                if rows:
                    s.execute(insert(model), rows)
            s.commit()


def serve(home: Path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k != "LORAREG_DATABASE_URL"}
    log = home.parent / "ui.log"
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "lorareg.cli.main", "--home", str(home), "ui", "--port", "0"],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/", log.read_text())
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"lorareg ui did not start: {log.read_text()}")


def timings(url: str, repeat: int) -> tuple[float, float]:
    from tests.support.headless_chromium import Chromium

    ttfb, full = [], []
    with Chromium(timeout=120) as browser:
        for i in range(repeat + 1):
            page = browser.open(url)
            nav = page.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                                " return [n.responseStart - n.requestStart, n.loadEventEnd - n.startTime]; })()")
            assert not page.errors, page.errors
            page.close()
            if i:  # the first load warms the server's caches and the browser's
                ttfb.append(nav[0])
                full.append(nav[1])
    return statistics.median(ttfb), statistics.median(full)


def statements(home: Path, paths: list[str]) -> dict[str, int]:
    from sqlalchemy import event
    from starlette.testclient import TestClient

    from lorareg import Registry
    from lorareg.cli.web.app import create_app

    counts: dict[str, int] = {}
    with Registry.open(home=home) as reg:
        seen = [0]
        event.listen(reg._ctx.db, "before_cursor_execute", lambda *a, **k: seen.__setitem__(0, seen[0] + 1))
        with TestClient(create_app(reg), base_url="http://127.0.0.1") as client:
            for path in paths:
                client.get(path)  # warm
                seen[0] = 0
                assert client.get(path).status_code == 200, path
                counts[path] = seen[0]
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", default="bench/_work/ui")
    ap.add_argument("--keep", action="store_true", help="reuse registries a previous run left in --workdir")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.workdir).resolve()
    results: dict[int, dict[str, tuple[float, float]]] = {}
    counts: dict[int, dict[str, int]] = {}
    small = work / f"r{sizes[0]}" / "home"
    for size in sizes:
        home = work / f"r{size}" / "home"
        if not (args.keep and home.exists()):
            shutil.rmtree(home.parent, ignore_errors=True)
            home.parent.mkdir(parents=True)
            t = time.perf_counter()
            if size == sizes[0]:
                build_small(home, home.parent, size)
            else:
                shutil.copytree(small, home, symlinks=True)
                grow(home, size)
            print(f"built {size:,} versions in {time.perf_counter() - t:.0f} s", flush=True)
        last = ((size - 1) // 50) * 50
        paths = [p.format(last=last) for _, p in PAGES]
        proc, base_url = serve(home)
        try:
            results[size] = {label: timings(base_url + path, args.repeat) for (label, _), path in zip(PAGES, paths)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        counts[size] = dict(zip([label for label, _ in PAGES], statements(home, paths).values()))
    lo, hi = sizes[0], sizes[-1]
    print(f"\n{'page':26} " + " ".join(f"{f'TTFB {s:,}':>13} {f'load {s:,}':>13}" for s in sizes) +
          f" {'TTFB ratio':>10} {'load ratio':>10}")
    for label, _ in PAGES:
        cells = " ".join(f"{results[s][label][0]:11.1f}ms {results[s][label][1]:11.1f}ms" for s in sizes)
        print(f"{label:26} {cells} {results[hi][label][0] / results[lo][label][0]:10.2f} "
              f"{results[hi][label][1] / results[lo][label][1]:10.2f}")
    print(f"\n{'page':26} " + " ".join(f"{f'SQL {s:,}':>12}" for s in sizes))
    for label, _ in PAGES:
        print(f"{label:26} " + " ".join(f"{counts[s][label]:12d}" for s in sizes))


if __name__ == "__main__":
    main()
