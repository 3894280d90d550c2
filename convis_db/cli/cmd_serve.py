"""convis-db serve"""

from __future__ import annotations

import logging

import click

from convis_db.cli.context import App, pass_app


@click.command("serve")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
              help="The database to browse (default: the group's --db / CONVIS_DB).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The explorer has no login: keep it on 127.0.0.1 unless you mean to share.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests for this host name (repeatable), e.g. the machine's name when sharing with "
                   "--host 0.0.0.0. Requests naming any other host get 400 (a defence against DNS rebinding).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default web browser.")
@pass_app
def command(app: App, db_path: str | None, host: str, port: int, allow_hosts: tuple[str, ...],
            open_browser: bool) -> None:
    """Browse the database in a web browser: images, concept trees, maps and concept search.

    Opens the database read-only (an ingest into the same file has to wait until the server stops) and
    renders maps from the stored windows; no model is run. Stop it with Ctrl+C.

    \b
    Example:
      convis-db --db my.duckdb serve
      convis-db serve --db my.duckdb --port 9000 --open
    """
    from convis_db.web.server import build_server, is_loopback, serve

    db = db_path or app.db
    if app.verbose == 0:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request unless -v
    server = build_server(db, host, port, allow_hosts)
    if not is_loopback(host):
        click.echo(click.style("warning: ", fg="yellow", bold=True)
                   + f"listening on {host}: anyone who can reach this address can browse {db} (there is no login).",
                   err=True)

    def ready(url: str) -> None:
        click.echo(f"convis-db explorer for {db} at {url}  (Ctrl+C to stop)")
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    serve(server, ready)
    click.echo("stopped.", err=True)
