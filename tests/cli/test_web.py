"""``lorareg ui`` routes through Starlette's TestClient: every page and JSON route, what they
show against what the Registry says, escaping of hostile text, GET only, no file outside the
registry, no credential, the Host check, security headers and errors."""

from __future__ import annotations

import html
import math
import re

import pytest
from starlette.testclient import TestClient

from tests.support.web_registry import SECRET, XSS

PAGES = {
    "/": ["Registry", "bases", "asst@prod", "Recent events"],
    "/versions": ["Versions", "asst@3", "chat@1", "of 10 versions"],
    "/v/asst@1": ["3 adapters merged into llama@1 with linear", "Reproduce", "lorareg rebuild asst@1", "passed",
                  "peft-unmerged", "2 sampled sequences (seed 0)"],
    "/v/asst@3": ["Made by subtracting math@1", "rollback: removed math@1"],
    "/v/chat": ["trained on", "Metrics", "eval_acc", "README.md"],
    "/v/llama@1": ["LlamaForCausalLM", "lorareg export llama@1"],
    "/v/tied": ["with ties", "density 0.5", "seed"],
    "/v/lean": ["kept as recipe only", "not kept (recipe only)"],
    "/lineage/asst@2": ["Lineage of", "rollback: −code@1 (rebuilt)", "rollback: −math@1 (subtracted)"],
    "/lineage/llama": ["tied@1", "trained on"],
    "/diff": ["Pick two versions"],
    "/diff?a=asst@1&b=asst@3": ["different models", "Side by side", "tensors differ"],
    "/diff?a=asst@1&b=lean@1": ["not compared"],
    "/aliases": ["Timeline", "rolled back", "asst@prod"],
    "/aliases?name=asst": ["Aliases of asst"],
}
API = ["/api/overview", "/api/versions", "/api/versions/asst@3", "/api/lineage/asst@2", "/api/diff?a=asst@1&b=asst@3",
       "/api/aliases", "/api/aliases?name=asst", "/api/events"]


@pytest.fixture(scope="module")
def home(tmp_path_factory, llama, llama_lora, llama_lora2):
    from tests.support.web_registry import build

    home = tmp_path_factory.mktemp("web") / "home"
    build(home, llama=llama, lora1=llama_lora, lora2=llama_lora2, work=tmp_path_factory.mktemp("web-work"), check=True)
    return home


@pytest.fixture(scope="module")
def registry(home):
    from lorareg import Registry

    with Registry.open(home=home) as reg:
        yield reg


@pytest.fixture(scope="module")
def client(registry):
    from lorareg.cli.web.app import create_app

    with TestClient(create_app(registry), base_url="http://127.0.0.1") as c:
        yield c


def text_of(body: str) -> str:
    """What a person reads: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


@pytest.mark.parametrize("path", sorted(PAGES))
def test_every_page_renders(client, path):
    r = client.get(path)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    shown = " ".join(text_of(r.text).split())
    for needle in PAGES[path]:
        assert needle in shown, (path, needle)


@pytest.mark.parametrize("path", API)
def test_every_api_route_answers_json(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()


def test_static_files_and_favicon(client):
    for name, kind in (("app.css", "text/css"), ("app.js", "text/javascript"), ("favicon.svg", "image/svg+xml")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
    r = client.get("/favicon.ico", follow_redirects=False)
    assert r.status_code == 301 and r.headers["location"] == "/static/favicon.svg"


def _no_nan(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def test_api_says_what_the_registry_says(client, registry):
    page = client.get("/api/versions?limit=500").json()["page"]
    assert page["total"] == registry.count() == 10
    assert [i["ref"] for i in page["items"]] == [i.ref for i in registry.ls()]
    one = client.get("/api/versions/asst@3").json()
    assert one["info"] == registry.get(ref="asst@3").to_dict()
    assert one["tracked"] == registry.tracked(ref="asst@3").to_dict()
    assert one["card"] == registry.model_card(ref="asst@3")
    assert client.get("/api/versions/asst@1").json()["checks"] == [c.to_dict() for c in registry.checks(ref="asst@1")]
    assert one["checks"] == []
    chat = client.get("/api/versions/chat").json()
    assert [p["value"] for p in chat["tracked"]["history"] if p["key"] == "loss"] == \
        [p.value for p in registry.tracked(ref="chat").history if p.key == "loss"]
    graph = client.get("/api/lineage/asst@2").json()
    up, down = registry.lineage(ref="asst@2"), registry.lineage(ref="asst@2", down=True)
    assert {n["ref"] for n in graph["nodes"]} == {n.ref for n in up.nodes + down.nodes}
    assert {(e["src"], e["dst"], e["role"]) for e in graph["edges"]} == \
        {(e.src, e.dst, e.role) for e in up.edges + down.edges}
    labels = {(e["src"], e["role"]): e["label"] for e in graph["edges"]}
    assert labels[("asst@2", "parent")] == "rollback: −code@1 (rebuilt)"
    assert labels[("asst@3", "parent")] == "rollback: −math@1 (subtracted)"
    diff = client.get("/api/diff?a=asst@1&b=asst@3").json()
    assert diff["result"] == _no_nan(registry.diff(a="asst@1", b="asst@3").to_dict())
    aliases = client.get("/api/aliases?name=asst").json()
    assert aliases["aliases"] == [a.to_dict() for a in registry.aliases(name="asst")]
    assert [e["args"].get("version") for e in aliases["events"]] == [2, 3, 1]
    assert aliases["events"][0]["args"]["rollback"] is True
    events = client.get("/api/events?limit=3").json()
    assert [e["id"] for e in events] == [e.id for e in registry.log(limit=3)]
    overview = client.get("/api/overview").json()
    assert overview["counts"] == {"base": 1, "adapter": 4, "merge": 5, "total": 10}


def test_versions_filters_sorts_and_pages(client, registry):
    def refs(query):
        return [i["ref"] for i in client.get(f"/api/versions?{query}").json()["page"]["items"]]

    assert refs("kind=merge") == ["asst@1", "asst@2", "asst@3", "lean@1", "tied@1"]
    assert refs("kind=merges") == refs("kind=merge")
    assert refs("q=ass") == ["asst@1", "asst@2", "asst@3"]
    assert refs("tag=stage") == ["code@1", "asst@3"]
    assert refs("tag=stage%3Dcandidate") == ["code@1"]
    assert refs("alias=prod") == ["asst@2"]
    assert refs("sort=metric:loss&desc=1")[:2] == ["code@1", "chat@1"]
    assert refs("sort=created&desc=1")[0] == "lean@1"
    paged = []
    for offset in range(0, 10, 3):
        paged += refs(f"limit=3&offset={offset}")
    assert paged == refs("limit=100")
    page = client.get("/versions?limit=3&offset=3&kind=&sort=kind")
    assert "4–6 of 10 versions" in text_of(page.text)
    assert 'href="/versions?limit=3&amp;kind=&amp;sort=kind&amp;offset=6"' in page.text
    metric_page = client.get("/versions?sort=metric:loss")
    assert "<th class=\"num\">loss</th>" in metric_page.text and "metric loss" in metric_page.text


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "limit=501", "offset=-1", "sort=bogus", "kind=model",
                                   "sort=metric:", "alias=Bad", "name=..%2Fx"])
def test_bad_queries_are_one_clear_error(client, query):
    for prefix in ("/versions", "/api/versions"):
        r = client.get(f"{prefix}?{query}")
        assert r.status_code == 400, (prefix, query)
        if prefix.startswith("/api"):
            assert r.json()["error"] and "hint" in r.json()
        else:
            assert "Error:" in text_of(r.text)


def test_hostile_text_is_escaped_everywhere(client):
    escaped = html.escape(XSS, quote=False)
    pages = {"/": "message", "/versions": "tag", "/versions?tag=stage": "tag", "/v/asst@3": "tag",
             "/v/asst@1": "message", "/v/chat": "param", "/v/carded": "model card", "/aliases": "alias message",
             "/diff?a=asst@1&b=asst@3": "message"}
    for path, what in pages.items():
        body = client.get(path).text
        assert "<script>window.__pwned" not in body and "<img src=x" not in body, (path, what)
        assert escaped.replace('"', "&#34;") in body or html.escape(XSS) in body or escaped in body, (path, what)
    for path in ("/api/versions/asst@3", "/api/versions/carded", "/api/overview"):
        r = client.get(path)
        assert r.headers["content-type"] == "application/json" and r.headers["x-content-type-options"] == "nosniff"
    assert XSS in client.get("/api/versions/asst@3").json()["tracked"]["tags"]["stage"]  # JSON keeps the text


METHODS = ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@pytest.mark.parametrize("path", ["/", "/versions", "/v/asst@1", "/lineage/asst@1", "/diff", "/aliases",
                                  "/static/app.css", "/api/overview", "/api/versions", "/api/versions/asst@1",
                                  "/api/lineage/asst@1", "/api/diff", "/api/aliases", "/api/events"])
def test_only_get(client, path):
    for method in METHODS:
        r = client.request(method, path)
        assert r.status_code == 405, (method, path)
        assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "HEAD"}
    head = client.head(path)
    assert head.status_code in (200, 400) and head.content == b""


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/app.py",
                                  "/static/%2e%2e%2f%2e%2e%2fregistry.db", "/static/%2e%2e",
                                  "/v/..%2F..%2Fetc%2Fpasswd",
                                  "/etc/passwd", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
                                  "/static/templates%2fbase.html", "/registry.db", "/blobs",
                                  "/versions/asst/1/config.json",
                                  "/v/%2e%2e", "/lineage/..%2f..%2fregistry.db", "/api/versions/..%2fx"])
def test_no_file_outside_the_registry_is_served(client, path):
    r = client.get(path)
    assert r.status_code in (400, 404), path
    assert "root:x:" not in r.text and "def create_app" not in r.text and "SQLite format" not in r.text
    assert "{% extends" not in r.text


def test_static_table_holds_only_shipped_assets():
    from lorareg.cli.web import app

    assert sorted(app._static_table()) == ["app.css", "app.js", "favicon.svg"]


def test_no_credential_is_shown(client, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    paths = list(PAGES) + API + ["/v/asst@2", "/api/versions/asst@2", "/v/carded", "/api/versions/carded"]
    for path in paths:
        assert SECRET not in client.get(path).text, path
    page = client.get("/v/asst@2").text
    assert 'href="https://hub.example/acme/asst/tree/v2"' in page  # the link, without the user:token@
    pushes = client.get("/api/versions/asst@2").json()["pushes"]
    assert pushes[0]["push"]["endpoint"] == "https://hub.example"
    assert "https://***@example.org" in client.get("/api/versions/carded").json()["card"]


@pytest.mark.postgres
def test_postgres_password_is_hidden(pg_url, tmp_path, llama):
    from lorareg import Registry
    from lorareg.cli.web.app import create_app

    url = pg_url.replace("lorareg@", "lorareg:pg-Pa55word@")  # trust auth: the password is ignored, and must not show
    with Registry.open(home=tmp_path / "h", database_url=url) as reg:
        reg.add_base(path=llama, name="llama")
        reg.log_metrics(ref="llama", metrics={"loss": 1.0}, step=1)
        with TestClient(create_app(reg), base_url="http://127.0.0.1") as c:
            for path in ("/", "/api/overview", "/versions?sort=metric:loss&desc=1", "/v/llama", "/lineage/llama"):
                r = c.get(path)
                assert r.status_code == 200 and "pg-Pa55word" not in r.text, path
            assert pg_url.replace("lorareg@", "lorareg:***@") in c.get("/").text


def test_host_header_must_name_this_machine(client, registry):
    from lorareg.cli.web.app import allowed_hosts, create_app

    assert client.get("/", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/", headers={"host": "localhost:8765"}).status_code == 200
    assert allowed_hosts("0.0.0.0") == ["*"]
    with TestClient(create_app(registry, host="0.0.0.0"), base_url="http://192.0.2.7") as c:
        assert c.get("/").status_code == 200


def test_security_headers_on_every_response(client):
    for path in ("/", "/api/overview", "/static/app.js", "/v/nope", "/nowhere"):
        h = client.get(path).headers
        csp = h["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer"


def test_errors_are_one_line_and_a_hint(client, registry, monkeypatch):
    r = client.get("/v/nope")
    assert r.status_code == 404 and "Error: unknown reference 'nope'" in text_of(r.text) and "Hint:" in r.text
    r = client.get("/api/versions/nope")
    assert r.status_code == 404 and r.json()["error"].startswith("unknown reference")
    assert client.get("/api/diff?a=asst@1").status_code == 400
    assert client.get("/nowhere").status_code == 404
    from lorareg.cli.web import gather
    from lorareg.cli.web.app import create_app

    def crash(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(gather, "overview", crash)
    with TestClient(create_app(registry), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        for path in ("/", "/api/overview"):
            r = c.get(path)
            assert r.status_code == 500 and "secret internals" not in r.text and "Traceback" not in r.text


def test_version_page_reproduce_command_reproduces(client, home):
    from click.testing import CliRunner

    from lorareg.cli.main import cli

    page = text_of(client.get("/v/asst@1").text)
    command = re.search(r"lorareg merge llama@1 \S+ \S+ \S+ --name asst [^\n]*?--dtype float32", page).group(0)
    assert command == "lorareg merge llama@1 chat@1:1.0 code@1:0.5 math@1:0.7 --name asst --method linear " \
                      "--seed 0 --dtype float32"
    result = CliRunner().invoke(cli, ["--home", str(home)] + command.split()[1:])
    assert result.exit_code == 0 and "already merged as asst@1" in result.output
    tied = text_of(client.get("/v/tied").text)
    assert re.search(r"lorareg merge llama@1 chat@1:1.0 code@1:1.0 --name tied --method ties --density 0.5 "
                     r"--majority-sign-method \S+ --seed 7 --dtype float32", tied)


def test_version_page_draws_graph_and_charts(client):
    body = client.get("/v/chat").text
    (chart,) = [f for f in body.split('<figure class="chart">')[1:] if "<b>loss</b>" in f]
    assert chart.count("<circle") == 20 and '<path class="line" d="M' in chart
    graph = re.search(r'<svg class="lineage".*?</svg>', body, re.S).group(0)
    for ref in ("llama@1", "chat@1", "asst@1", "tied@1"):
        assert f'href="/v/{ref.replace("@", "%40")}"' in graph, ref
    assert "Checks" in body
