"""The Starlette app: GET routes only, pages and their JSON twins under ``/api/``.

Safety, in layers: Jinja2 autoescapes every value; a Content-Security-Policy allows only
this app's own script and stylesheet (an injected ``<script>`` would not run even if
escaping failed); the only files served are the few shipped in ``static/``, looked up by
exact name in a table built at start (no path from a request ever reaches the file system);
the Host header must name the address bound (a web page elsewhere cannot reach a local
server through DNS rebinding); the database URL comes from ``Registry.location()``, which
hides its password; and unexpected errors show no traceback."""

from __future__ import annotations

import logging
import math
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from lorareg.cli.web import gather, graph_svg, words
from lorareg.cli.web.chart_svg import charts
from lorareg.errors import LoraregError, NotFoundError

HERE = Path(__file__).parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-resource-policy": "same-origin",
}
log = logging.getLogger("lorareg.ui")


def allowed_hosts(host: str) -> list[str]:
    """Host headers accepted: the loopback names when bound to loopback, else any (the
    command warns that the registry is then readable by whoever reaches the address)."""
    return sorted(LOOPBACK | {"[::1]"}) if host in LOOPBACK else ["*"]


class SecurityHeaders:
    """Pure ASGI middleware adding ``HEADERS`` to every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode(), v.encode()) for k, v in HEADERS.items() if k.encode() not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _static_table() -> dict[str, tuple[bytes, str]]:
    out = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.is_file() and not path.name.startswith("."):
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            out[path.name] = (path.read_bytes(), kind + ("; charset=utf-8" if kind.startswith("text/") or
                                                         kind.endswith(("javascript", "svg+xml")) else ""))
    return out


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, finalize=_redacted)
    env.filters.update(size=words.human_size, short=words.short, num=words.number, arg=words.event_arg,
                       when=lambda t, zone=True: f"{t:%Y-%m-%d %H:%M:%S}{' UTC' if zone else ''}" if t else "-",
                       minute=lambda t: f"{t:%Y-%m-%d %H:%M}" if t else "-",
                       iso=lambda t: t.isoformat(timespec="seconds") if t else "",
                       yn=lambda v: ("yes" if v else "no") if isinstance(v, bool) else v)
    return env


def _redacted(value: Any) -> Any:
    """Jinja's ``finalize``: every value a template prints, credentials blanked (Markup stays Markup)."""
    if isinstance(value, Markup):
        return Markup(words.redact(str(value)))
    return words.redact(value) if isinstance(value, str) else value


def _for_json(value: Any) -> Any:
    """JSON has no NaN: a float that is not finite (an unmeasured difference) becomes null;
    and every string is redacted as the pages are."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return words.redact(value)
    if isinstance(value, dict):
        return {words.redact(k): _for_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_json(v) for v in value]
    return value


def create_app(registry, *, host: str = "127.0.0.1") -> Starlette:
    """The web view of ``registry`` (a ``Registry``; the caller closes it).  ``host`` is the
    address served, which decides the Host headers accepted."""
    env = _environment()
    static = _static_table()
    location = registry.location()

    def page(template: str, request: Request, status: int = 200, **data: Any) -> HTMLResponse:
        html = env.get_template(template).render({"location": location, **data}, request=request, nav=template)
        return HTMLResponse(html, status_code=status)

    def api(data: Any) -> JSONResponse:
        return JSONResponse(_for_json(gather.to_json(data)))

    def ref_param(request: Request) -> str:
        return request.path_params["ref"]

    # -- pages -----------------------------------------------------------------------------------
    def overview(request: Request) -> Response:
        return page("overview.html", request, **gather.overview(registry))

    def versions(request: Request) -> Response:
        filters = gather.version_filters(request.query_params, request.query_params.getlist("tag"))
        return page("versions.html", request, page_sizes=gather.PAGE_SIZES, orders=gather.ORDERS,
                    query=request.query_params, **gather.versions(registry, filters))

    def version(request: Request) -> Response:
        data = gather.version(registry, ref_param(request))
        graph = data["graph"]
        tracked = data["tracked"]
        return page("version.html", request, **data, charts=charts(tracked.history, dict(tracked.metrics)),
                    layout=graph_svg.layout(graph["nodes"], graph["edges"], root=graph["root"],
                                            edge_labels=graph["labels"]))

    def lineage(request: Request) -> Response:
        graph = gather.lineage(registry, ref_param(request))
        return page("lineage.html", request, graph=graph,
                    layout=graph_svg.layout(graph["nodes"], graph["edges"], root=graph["root"],
                                            edge_labels=graph["labels"]))

    def diff(request: Request) -> Response:
        a, b = (request.query_params.get(k, "").strip() for k in ("a", "b"))
        data = gather.diff(registry, a, b) if a and b else None
        return page("diff.html", request, a=a, b=b, data=data)

    def aliases(request: Request) -> Response:
        name = request.query_params.get("name", "").strip() or None
        return page("aliases.html", request, **gather.aliases(registry, name))

    def static_file(request: Request) -> Response:
        found = static.get(request.path_params["name"])
        if found is None:
            raise HTTPException(404, "no such file")
        return Response(found[0], media_type=found[1], headers={"cache-control": "no-cache"})

    def favicon(request: Request) -> Response:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    # -- JSON --------------------------------------------------------------------------------------
    def api_overview(request: Request) -> Response:
        return api(gather.overview(registry))

    def api_versions(request: Request) -> Response:
        filters = gather.version_filters(request.query_params, request.query_params.getlist("tag"))
        return api(gather.versions(registry, filters))

    def api_version(request: Request) -> Response:
        data = gather.version(registry, ref_param(request))
        data["graph"] = gather.lineage_json(data["graph"])
        return api(data)

    def api_lineage(request: Request) -> Response:
        return api(gather.lineage_json(gather.lineage(registry, ref_param(request))))

    def api_diff(request: Request) -> Response:
        a, b = (request.query_params.get(k, "").strip() for k in ("a", "b"))
        if not a or not b:
            raise gather.BadQuery("diff needs two versions", hint="/api/diff?a=NAME@1&b=NAME@2")
        return api(gather.diff(registry, a, b))

    def api_aliases(request: Request) -> Response:
        return api(gather.aliases(registry, request.query_params.get("name", "").strip() or None))

    def api_events(request: Request) -> Response:
        limit = gather.int_param(request.query_params, "limit", 50, 1, 1000)
        return api(registry.log(ref=request.query_params.get("ref") or None, limit=limit))

    # -- errors: one line and a hint, like the CLI; no traceback ever reaches the page ------------------
    def error(request: Request, status: int, message: str, hint: str | None) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message, "hint": hint}, status_code=status)
        return page("error.html", request, status=status, status_code=status, message=message, hint=hint)

    def on_lorareg_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoraregError)
        status = 404 if isinstance(exc, NotFoundError) else 400
        return error(request, status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.hint)

    def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        hint = "this view only reads: GET requests" if exc.status_code == 405 else "start from the overview: /"
        response = error(request, exc.status_code, exc.detail, hint)
        response.headers.update(exc.headers or {})
        return response

    def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("lorareg ui: %s failed", request.url.path)
        return error(request, 500, "internal error", "the terminal running lorareg ui has the traceback")

    def get(path: str, endpoint: Callable[[Request], Response]) -> Route:
        return Route(path, endpoint, methods=["GET"])  # HEAD comes with GET; anything else is a 405

    routes = [
        get("/", overview), get("/versions", versions), get("/v/{ref}", version), get("/lineage/{ref}", lineage),
        get("/diff", diff), get("/aliases", aliases), get("/static/{name}", static_file), get("/favicon.ico", favicon),
        get("/api/overview", api_overview), get("/api/versions", api_versions), get("/api/versions/{ref}", api_version),
        get("/api/lineage/{ref}", api_lineage), get("/api/diff", api_diff), get("/api/aliases", api_aliases),
        get("/api/events", api_events),
    ]
    return Starlette(routes=routes,
                     middleware=[Middleware(SecurityHeaders),
                                 Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host))],
                     exception_handlers={LoraregError: on_lorareg_error, HTTPException: on_http_error,
                                         Exception: on_crash})
