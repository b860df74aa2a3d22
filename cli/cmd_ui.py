"""ui: serve the read-only web view of the registry (``lorareg.cli.web``)."""

from __future__ import annotations

import socket

import click

from lorareg.cli.common import open_registry
from lorareg.cli.errors import fail

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is one clear error and
    ``--port 0`` can say which port it got."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        fail(f"cannot serve on {host!r}: {exc.strerror}", "use an address of this machine, e.g. --host 127.0.0.1")
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror}", "pick another port with --port, e.g. --port 8766")
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback lets others on the network read the registry.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@click.pass_context
def ui(ctx: click.Context, host: str, port: int, open_browser: bool) -> None:
    """Serve a read-only web view of the registry: versions, lineage graphs, metric charts,
    diffs, alias history, and the same data as JSON under /api/.  Ctrl-C stops it.

    \b
    Examples:
      lorareg ui --open                 # http://127.0.0.1:8765/ in your browser
      lorareg ui --port 9000
      LORAREG_DATABASE_URL=postgresql://... lorareg ui
    """
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        fail("the web view is not installed; install it with: pip install 'lorareg[ui]'")
    from lorareg.cli.web.app import create_app

    if host not in LOOPBACK:
        click.echo(f"Warning: serving on {host}: anyone who can reach this address can read the whole registry "
                   "(there is no login). Use the default --host 127.0.0.1 to keep it on this machine.", err=True)
    reg = open_registry(ctx)
    try:
        app = create_app(reg, host=host)
        sock = _bind(host, port)
        url = _url(host, sock)
        click.echo(f"lorareg ui: {reg.location().home} at {url}  (read-only; Ctrl-C stops it)")
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        server.run(sockets=[sock])
    finally:
        reg.close()


COMMANDS = [ui]
