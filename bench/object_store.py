"""Benchmark: `lorareg add base` + `merge` + `export` through an object server vs the local store
vs the floor (the same bytes moved with boto3 alone).

    .venv/bin/python -m bench.object_store [--size small|medium|full] [--runs 3] [--keep] [--json]

Builds user_path.py's Llama-shaped bf16 base and r=16 all-projection adapter, starts a real
SeaweedFS S3 server (tests/support/seaweed.py, on free ports, data in a temp folder), then in
each run times every step as its own process (a runner whose only child is the step, so the
peak RSS is the step's own):

  local_*   add base, add adapter, merge, export in one LORAREG_HOME (blobs in LORAREG_HOME/blobs)
  floor_*   boto3 alone (s3transfer's defaults: 8 MB parts, 10 in flight; no extra checksums):
            upload the base's files; download them to files; upload the merged output's files
            (the local export's)
  team_*    LORAREG_BLOBS=s3://BUCKET/PREFIX and one shared SQLite database: home A adds the base
            and the adapter, home B (a second machine: the base is not in its cache) merges
            and exports, reading the base with ranged requests
  same_*    the same four steps in one home with an object store (the base is in its cache)

Each scenario has a bucket of its own per run (SeaweedFS keeps a bucket's objects in volume
files of its own, so a step's page-cache warm-up covers only its bucket), deleted after the run.
Before each step the inputs, the step's homes and its bucket's volume files are read into the
page cache and dirty pages synced (untimed, plus --settle seconds).  The object server runs on
the same 2 cores as the steps: its CPU is part of every object-store figure.  Afterwards the
merged outputs are compared across the stores: same weights digest (`lorareg show --json`) and
the same sha256 of every exported weight and index file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.merge_vs_peft import prepare_inputs
from bench.user_path import LOREG, SIZES, _warm

HERE = Path(__file__).resolve().parent
REGION = "us-east-1"
SCENARIOS = ("local", "team", "same")
LOREG_STEPS = ("add_base", "add_adapter", "merge", "export")
FLOORS = ("floor_up", "floor_down", "floor_up_merged")
STEPS = tuple(f"local_{s}" for s in LOREG_STEPS) + FLOORS + tuple(
    f"{sc}_{s}" for sc in ("team", "same") for s in LOREG_STEPS)


# --- one step, in its own process -----------------------------------------------------------------

def _home(step: str) -> str:
    scenario, _, action = step.partition("_")
    if scenario == "team":
        return "home-b" if action in ("merge", "export") else "home-a"
    return f"home-{scenario}"


def _step_env(step: str, work: Path, run: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LORAREG_BLOBS", "LORAREG_DATABASE_URL")}
    env["LORAREG_HOME"] = str(work / _home(step))
    scenario = step.partition("_")[0]
    if scenario in ("team", "same"):
        env["LORAREG_BLOBS"] = f"s3://{bucket(scenario, run)}/blobs"
    if scenario == "team":  # two machines, one database
        env["LORAREG_DATABASE_URL"] = f"sqlite:///{work / 'team.db'}"
    return env


def _step_cmd(step: str, work: Path, run: int) -> list[str]:
    if step in FLOORS:
        return [sys.executable, "-m", "bench.object_store", "--workdir", str(work), "--floor", step,
                "--run", str(run)]
    action = step.partition("_")[2]
    return [LOREG, *{
        "add_base": ["add", "base", str(work / "base"), "--name", "bench"],
        "add_adapter": ["add", "adapter", str(work / "adapter"), "--base", "bench", "--name", "ad"],
        "merge": ["merge", "bench", "ad", "--name", "merged"],
        "export": ["export", "merged", str(work / f"out-{step.partition('_')[0]}")],
    }[action]]


def run_step(step: str, work: Path, run: int) -> dict:
    """Runner: the step is this process's only child, so RUSAGE_CHILDREN is its peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.run(_step_cmd(step, work, run), capture_output=True, text=True, env=_step_env(step, work, run),
                          cwd=HERE.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"step {step} failed with exit code {proc.returncode}")
    return {"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _measure(step: str, work: Path, run: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.object_store", "--workdir", str(work), "--runner", step,
                           "--run", str(run)], capture_output=True, text=True, cwd=HERE.parent)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the floor: boto3 alone -----------------------------------------------------------------------

def bucket(scenario: str, run: int) -> str:
    return f"bench-{scenario}-{run}"


def _client():
    import boto3
    from botocore.config import Config

    return boto3.client("s3", region_name=REGION, config=Config(
        max_pool_connections=24, s3={"addressing_style": "path"},
        request_checksum_calculation="when_required", response_checksum_validation="when_required"))


def floor(step: str, work: Path, run: int) -> None:
    from boto3.s3.transfer import TransferConfig

    s3, name = _client(), bucket("floor", run)
    cfg = TransferConfig()  # the library's own defaults: the floor does not depend on lorareg's choices
    if step == "floor_up":
        for p in sorted((work / "base").iterdir()):
            s3.upload_file(str(p), name, f"base/{p.name}", Config=cfg)
    elif step == "floor_down":
        dest = work / "floor-down"
        dest.mkdir(exist_ok=True)
        for p in sorted((work / "base").iterdir()):
            s3.download_file(name, f"base/{p.name}", str(dest / p.name), Config=cfg)
    else:
        for p in sorted((work / "out-local").iterdir()):
            s3.upload_file(str(p), name, f"merged/{p.name}", Config=cfg)


# --- the run --------------------------------------------------------------------------------------

def _server_env(server) -> None:
    """The standard AWS environment, pointing at the server; nothing from the user's own AWS setup."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(var, None)
    os.environ.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key,
                      AWS_REGION=REGION, AWS_ENDPOINT_URL=server.endpoint, AWS_EC2_METADATA_DISABLED="true",
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)


def _drop_bucket(s3, name: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        if keys:
            s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=name)


def _warm_for(step: str, work: Path, server_root: Path, run: int) -> None:
    scenario = step.partition("_")[0]
    folders = [work / "base", work / "adapter"]
    if step == "floor_up_merged":
        folders = [work / "out-local"]
    if scenario in SCENARIOS:
        folders.append(work / _home(step))
    _warm(*folders)
    name = bucket("floor" if step in FLOORS else scenario, run)
    for p in (server_root / "data").glob(f"{name}_*.dat"):
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def _digest(work: Path, scenario: str, run: int) -> str:
    env = _step_env(f"{scenario}_export", work, run)  # the home that merged (team: home B)
    out = subprocess.run([LOREG, "show", "merged", "--json"], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)["weights_digest"]


def _file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every exported file but the model card (it names the registry, so it may differ)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name != "README.md"}


def _blob_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in (folder / "sha256").rglob("*") if p.is_file()) if folder.exists() else 0


def _summary(results: dict[str, list[dict]], base_bytes: int, merged_bytes: int) -> str:
    med = {s: statistics.median(r["wall_s"] for r in rs) for s, rs in results.items() if rs}
    lines = [f"{'step':<20} {'min s':>7} {'median s':>9} {'max s':>7} {'peak RSS MB':>12}"]
    for step, rs in results.items():
        if rs:
            w = [r["wall_s"] for r in rs]
            lines.append(f"{step:<20} {min(w):>7.2f} {med[step]:>9.2f} {max(w):>7.2f} "
                         f"{max(r['peak_rss_mb'] for r in rs):>12.0f}")
    n = len(next(iter(results.values())))
    lines.append(f"(base {base_bytes / 1e9:.2f} GB, merged {merged_bytes / 1e9:.2f} GB; {n} runs; ratios of medians)")

    def total(sc: str) -> float:
        return sum(med.get(f"{sc}_{s}", 0.0) for s in ("add_base", "merge", "export"))

    floor_merge = med.get("floor_down", 0) + med.get("floor_up_merged", 0)
    floor_all = med.get("floor_up", 0) + floor_merge
    for sc in ("team", "same"):
        if f"{sc}_merge" not in med:
            continue
        lines.append(f"{sc}: add base {med[sc + '_add_base'] / med['local_add_base']:.2f}x local, "
                     f"{med[sc + '_add_base'] / med['floor_up']:.2f}x floor_up | "
                     f"merge {med[sc + '_merge'] / med['local_merge']:.2f}x local, "
                     f"{med[sc + '_merge'] / floor_merge:.2f}x floor_down+floor_up_merged | "
                     f"export {med[sc + '_export'] / med['local_export']:.2f}x local | "
                     f"add base+merge+export {total(sc):.2f} s = {total(sc) / total('local'):.2f}x local "
                     f"({total('local'):.2f} s), {total(sc) / floor_all:.2f}x floor ({floor_all:.2f} s)")
    rss = {sc: max((r["peak_rss_mb"] for r in results.get(f"{sc}_merge", [])), default=0) for sc in SCENARIOS}
    lines.append("merge peak RSS: " + ", ".join(f"{sc} {rss[sc]:.0f} MB" for sc in SCENARIOS)
                 + f" (object store / local: {max(rss['team'], rss['same']) / max(rss['local'], 1):.2f}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated base and adapter")
    ap.add_argument("--workdir", type=Path, default=HERE / "_work" / "object_store")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait after sync before each step")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runner", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--floor", choices=FLOORS, help=argparse.SUPPRESS)
    ap.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = args.workdir.resolve()
    if args.runner:
        print(json.dumps(run_step(args.runner, work, args.run)))
        return
    if args.floor:
        floor(args.floor, work, args.run)
        return

    from tests.support.seaweed import SeaweedServer

    spec = SIZES[args.size]
    prepare_inputs(work, spec)
    base_bytes = sum(p.stat().st_size for p in (work / "base").iterdir())
    base_blobs = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (work / "base").glob("*.safetensors")}

    server_root = Path(tempfile.mkdtemp(prefix="lorareg-bench-s3-"))  # short: unix socket paths
    server = SeaweedServer(server_root)
    server.start()
    _server_env(server)
    s3 = _client()
    print(f"object server: SeaweedFS {server.endpoint}, started in {server.started_in_s:.1f} s", flush=True)
    results: dict[str, list[dict]] = {s: [] for s in STEPS}
    checks: list[str] = []
    merged_bytes = 0
    try:
        for run in range(1, args.runs + 1):
            for name in ("home-local", "home-a", "home-b", "home-same", "team.db", "out-local", "out-team",
                         "out-same", "floor-down"):
                shutil.rmtree(work / name, ignore_errors=True) if (work / name).is_dir() else (work / name).unlink(
                    missing_ok=True)
            for sc in ("floor", "team", "same"):
                s3.create_bucket(Bucket=bucket(sc, run))
            for step in STEPS:
                _warm_for(step, work, server_root, run)
                os.sync()
                time.sleep(args.settle)
                r = _measure(step, work, run)
                results[step].append(r)
                print(f"run {run} {step:<20} {r['wall_s']:6.2f} s  {r['peak_rss_mb']:6.0f} MB", flush=True)
                if step == "team_merge":
                    cached = {p.parent.name + p.name for p in (work / "home-b" / "cache" / "sha256").rglob("*")
                              if p.is_file()}
                    r["home_b_cache_bytes"] = _blob_bytes(work / "home-b" / "cache")
                    r["base_blobs_in_home_b_cache"] = len(base_blobs & cached)
                    print(f"      home B's cache after the merge: {r['home_b_cache_bytes'] / 1e6:.1f} MB, "
                          f"{len(base_blobs & cached)} of the base's {len(base_blobs)} shard blobs", flush=True)
            merged_bytes = sum(p.stat().st_size for p in (work / "out-local").glob("*.safetensors"))
            digests = {sc: _digest(work, sc, run) for sc in SCENARIOS}
            files = {sc: _file_hashes(work / f"out-{sc}") for sc in SCENARIOS}
            same = len(set(digests.values())) == 1 and all(files[sc] == files["local"] for sc in SCENARIOS)
            checks.append(f"run {run}: " + ("merged outputs identical across local/team/same: "
                                            f"{digests['local']}, {len(files['local'])} files same sha256"
                                            if same else f"DIFFERENT: {digests} {files}"))
            print(checks[-1], flush=True)
            for sc in ("floor", "team", "same"):
                _drop_bucket(s3, bucket(sc, run))
        print(_summary(results, base_bytes, merged_bytes))
        if args.json:
            print(json.dumps({"results": results, "checks": checks}, indent=2))
    finally:
        server.stop()
        shutil.rmtree(server_root, ignore_errors=True)
        for name in ("home-local", "home-a", "home-b", "home-same", "out-local", "out-team", "out-same", "floor-down"):
            shutil.rmtree(work / name, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
