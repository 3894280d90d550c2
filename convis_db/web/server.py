"""Run the explorer on a local address with Werkzeug's threaded WSGI server."""

from __future__ import annotations

import errno
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, get_sockaddr, make_server, select_address_family

from convis_db.errors import UsageError
from convis_db.web.app import LOOPBACK_HOSTS, create_app

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_of(server: BaseWSGIServer) -> str:
    host = server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.port}/"


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket; raises UsageError (not Werkzeug's print-and-exit) when it cannot bind."""
    try:
        family = select_address_family(host, port)
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Check --host.") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(get_sockaddr(host, int(port), family))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"cannot listen on {host}:{port}: the port is in use (another `convis-db serve`?). "
                             "Stop it, or pick another port with --port (0 picks a free one).") from exc
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Check --host and --port.") from exc
    return sock


def trusted_hosts_for(host: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The Host header values to answer: loopback names (always), the --host itself unless it is a
    wildcard address, and the names given with --allow-host (how others reach a shared explorer)."""
    names = [*LOOPBACK_HOSTS]
    if host not in ("0.0.0.0", "::", ""):
        names += [host, f"[{host}]"] if ":" in host else [host]
    return list(dict.fromkeys([*names, *extra]))


def build_server(db_path: str | Path, host: str = "127.0.0.1", port: int = 8765,
                 allow_hosts: tuple[str, ...] = ()) -> BaseWSGIServer:
    """A bound, not yet serving, threaded server for the database (port 0 picks a free port)."""
    sock = _listen(host, port)
    try:
        app = create_app(db_path, trusted_hosts=trusted_hosts_for(host, allow_hosts))
        try:
            server = make_server(host, port, app, threaded=True, fd=sock.fileno())
        except BaseException:
            app.extensions["convis_explorer"].close()
            raise
    finally:
        sock.close()  # the server holds its own duplicate of the descriptor
    return server


def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def serve(server: BaseWSGIServer, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (Ctrl+C or SIGTERM), then close the server and the database."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if on_ready:
            on_ready(url_of(server))
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        server.server_close()
        server.app.extensions["convis_explorer"].close()
