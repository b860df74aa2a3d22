"""The web view's pure parts: the lineage layout, the metric charts, recipes in words, the
``ui`` command's own checks, and the wheel's package data."""

from __future__ import annotations

import socket
import sys
import tomllib
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorareg.cli.main import cli
from lorareg.cli.web import chart_svg, graph_svg, words
from lorareg.registry.results import Edge, MetricPoint, Node

ROOT = Path(__file__).resolve().parents[2]


def node(ref, kind, stored=True):
    return Node(ref=ref, kind=kind, digest="sha256:" + "ab" * 32, stored=stored)


def chain_graph():
    """A base, three adapters, a merge rolled back twice (a three-step chain) and a ties merge."""
    nodes = [node("llama@1", "base"), node("chat@1", "adapter"), node("code@1", "adapter"), node("math@1", "adapter"),
             node("m@1", "merge"), node("m@2", "merge"), node("m@3", "merge", stored=False), node("t@1", "merge")]
    edges = [Edge(a, "llama@1", "trained_on") for a in ("chat@1", "code@1", "math@1")]
    edges += [Edge("m@1", "llama@1", "base"), Edge("m@1", "chat@1", "adapter", 1.0, 0),
              Edge("m@1", "code@1", "adapter", 0.5, 1), Edge("m@1", "math@1", "adapter", 0.7, 2),
              Edge("m@2", "llama@1", "base"), Edge("m@2", "chat@1", "adapter", 1.0, 0),
              Edge("m@2", "math@1", "adapter", 0.7, 1), Edge("m@2", "m@1", "parent"),
              Edge("m@3", "llama@1", "base"), Edge("m@3", "chat@1", "adapter", 1.0, 0), Edge("m@3", "m@2", "parent"),
              Edge("t@1", "llama@1", "base"), Edge("t@1", "chat@1", "adapter", 1.0, 0),
              Edge("t@1", "code@1", "adapter", 1.0, 1)]
    return nodes, edges


def overlaps(a, b, pad=0.0):
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def test_layout_layers_order_and_spacing():
    nodes, edges = chain_graph()
    labels = {("m@2", "m@1", "parent"): "rollback: −code@1 (rebuilt)",
              ("m@3", "m@2", "parent"): "rollback: −math@1"}
    lay = graph_svg.layout(nodes, edges, root="m@2", edge_labels=labels)
    at = {n.ref: n for n in lay.nodes}
    assert lay.layers == 5  # base / adapters / m@1 / m@2 / m@3: the chain is a column of layers
    assert at["llama@1"].y < at["chat@1"].y == at["code@1"].y == at["math@1"].y < at["m@1"].y
    assert at["m@1"].y < at["m@2"].y < at["m@3"].y
    assert at["t@1"].y == at["m@1"].y
    boxes = [(n.x, n.y, n.x + n.w, n.y + n.h) for n in lay.nodes]
    for i, a in enumerate(boxes):
        assert a[0] >= 0 and a[1] >= 0 and a[2] <= lay.width and a[3] <= lay.height
        for b in boxes[i + 1:]:
            assert not overlaps(a, b, pad=graph_svg.GAP_X - 1), (a, b)
    for e in lay.edges:  # every edge is drawn from its input's bottom down to the derived version's top
        start = tuple(map(float, e.d.split()[0][1:].split(",")))
        end = tuple(map(float, e.d.split()[-1].lstrip("CL").split(",")))
        assert start[1] == at[e.dst].y + at[e.dst].h and end[1] == at[e.src].y, e
        assert at[e.dst].x <= start[0] <= at[e.dst].x + at[e.dst].w
        assert at[e.src].x <= end[0] <= at[e.src].x + at[e.src].w
    shown = {(e.src, e.role): e.label for e in lay.edges}
    assert shown[("m@2", "parent")] == "rollback: −code@1 (rebuilt)"
    assert shown[("m@1", "adapter")] in ("×1", "×0.5", "×0.7")
    label_boxes = [(e.label_x - len(e.label) * 3.3, e.label_y - 12, e.label_x + len(e.label) * 3.3, e.label_y + 2)
                   for e in lay.edges if e.label]
    for i, a in enumerate(label_boxes):
        for b in label_boxes[i + 1:]:
            assert not overlaps(a, b), (a, b)
    assert "root" in at["m@2"].classes and "not-stored" in at["m@3"].classes and "recipe only" in at["m@3"].line2


def test_layout_keeps_a_long_name_inside_its_box_and_survives_odd_input():
    long = "a-very-long-adapter-name-for-a-small-box@12"
    lay = graph_svg.layout([node(long, "adapter"), node("b@1", "base")], [Edge(long, "b@1", "trained_on"),
                                                                          Edge(long, "gone@1", "adapter")], root=long)
    (n,) = [n for n in lay.nodes if n.ref == long]
    assert len(n.line1) <= 26 and n.line1.endswith("…") and long in n.title
    assert len(lay.edges) == 1  # an edge to a version not in the graph is not drawn
    assert graph_svg.layout([], [], root="x").nodes == ()
    cyc = graph_svg.layout([node("a@1", "merge"), node("b@1", "merge")],
                           [Edge("a@1", "b@1", "parent"), Edge("b@1", "a@1", "parent")], root="a@1")
    assert len(cyc.nodes) == 2  # impossible in a registry, but no endless loop


def test_charts():
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    pts = [MetricPoint("loss", 2.0, 10, t), MetricPoint("loss", 1.0, 20, t), MetricPoint("loss", 1.5, 15, t),
           MetricPoint("acc", 0.5, None, t), MetricPoint("acc", 0.7, None, t), MetricPoint("loss", 9.0, None, t)]
    acc, loss = chart_svg.charts(pts, {"loss": 1.0, "acc": 0.7})
    assert [p.title for p in loss.points] == ["loss = 2 at step 10", "loss = 1.5 at step 15", "loss = 1 at step 20"]
    xs, ys = [p.x for p in loss.points], [p.y for p in loss.points]
    assert xs == sorted(xs) and ys[0] < ys[1] < ys[2]  # larger values are drawn higher (smaller y)
    assert loss.note == "1 point(s) logged without a step are not drawn" and loss.latest == "1"
    assert acc.x_label == "logged (no step)" and len(acc.points) == 2
    assert all(chart_svg.TOP <= y <= chart_svg.H - chart_svg.BOTTOM for y in ys)
    assert chart_svg.nice_ticks(0.13, 0.87) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert chart_svg.nice_ticks(5.0, 5.0)[0] < 5.0 < chart_svg.nice_ticks(5.0, 5.0)[-1]
    (single,) = chart_svg.charts([MetricPoint("x", 3.0, 1, t)], {"x": 3.0})
    assert single.points[0].x == chart_svg.LEFT + (chart_svg.W - chart_svg.LEFT - chart_svg.RIGHT) / 2


def test_words():
    recipe = {"schema": 2, "engine": "lorareg-merge/1", "base": {"ref": "b@1", "digest": "sha256:0"},
              "adapters": [{"ref": "a@1", "digest": "sha256:1", "config_digest": "sha256:2", "weight": 1 / 3}],
              "method": "ties", "params": {"density": 0.5, "majority_sign_method": "total"}, "seed": 7,
              "dtype": "bfloat16",
              "adapter_dtype": "base", "output": "svd", "rank": 8, "max_shard_size": 1000, "allow_base_mismatch": True,
              "subtracted": None, "lorareg_version": "0.1.0", "versions": {"torch": "2.13.0"}}
    cmd = words.merge_command("n", recipe)
    assert cmd == ("lorareg merge b@1 a@1:0.3333333333333333 --name n --method ties --density 0.5 "
                   "--majority-sign-method total --seed 7 --dtype bfloat16 --adapter-dtype base --as-adapter svd "
                   "--rank 8 --max-shard-size 1000 --allow-base-mismatch")
    w = words.recipe_words(recipe, {"notes": ["a note"]})
    assert w.headline == "1 adapter of b@1 combined into one adapter (svd, rank 8) with ties."
    assert dict(w.rows)["method"] == "ties: density 0.5, majority_sign_method total"
    assert dict(w.rows)["library versions"] == "torch 2.13.0" and w.notes == ("a note",)
    assert words.safe_url("javascript:alert(1)", "x") is None
    assert words.safe_url("https://u:p@hub.example:8443/base/", "acme/m", "tree", "v 1") == \
        "https://hub.example:8443/base/acme/m/tree/v%201"
    assert words.redact("postgresql://u:pw@h/db hf_abcdefghijklmnopqrstuv") == "postgresql://u:***@h/db hf_***"
    assert words.event_arg(["sha256:" + "f" * 64, 2]) == "sha256:" + "f" * 16 + ", 2"


def test_ui_says_how_to_install_the_extra(monkeypatch, lorareg_home):
    monkeypatch.setitem(sys.modules, "starlette", None)  # as if `pip install lorareg` without [ui]
    result = CliRunner().invoke(cli, ["ui"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: the web view is not installed; install it with: "
                                                  "pip install 'lorareg[ui]'"]


@pytest.fixture
def served(monkeypatch):
    """``uvicorn.Server.run`` replaced: the command's own work (checks, bind, message) runs for real."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: calls.append((self.config, sockets)))
    return calls


def test_ui_binds_loopback_by_default(served, lorareg_home):
    result = CliRunner().invoke(cli, ["ui", "--port", "0"])
    assert result.exit_code == 0, result.output
    (config, (sock,)), = served
    host, port = sock.getsockname()[:2]
    assert host == "127.0.0.1" and port > 0
    assert f"at http://127.0.0.1:{port}/" in result.output and "Warning" not in result.output
    sock.close()


def test_ui_warns_for_another_host(served, lorareg_home):
    result = CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 0
    assert "Warning: serving on 0.0.0.0: anyone who can reach this address can read the whole registry" in result.output
    served[0][1][0].close()


def test_ui_busy_port_is_one_line(served, lorareg_home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["ui", "--port", str(port)])
    assert result.exit_code == 1 and not served
    assert f"Error: cannot listen on 127.0.0.1:{port}" in result.output and "Hint: pick another port" in result.output


def test_package_data_ships_every_template_and_asset():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = conf["tool"]["setuptools"]
    assert "lorareg.cli.web" in tool["packages"] and tool["package-dir"]["lorareg.cli.web"] == "cli/web"
    globs = tool["package-data"]["lorareg.cli.web"]
    web = ROOT / "cli" / "web"
    shipped = [p.relative_to(web).as_posix() for p in web.rglob("*") if p.is_file() and p.suffix != ".py"
               and "__pycache__" not in p.parts]
    assert shipped and all(any(fnmatch(f, g) for g in globs) for f in shipped), (shipped, globs)
    assert set(conf["project"]["optional-dependencies"]["ui"]) <= set(conf["project"]["optional-dependencies"]["test"])
