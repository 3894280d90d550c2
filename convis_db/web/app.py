"""The Flask app: one HTML page (plain JS and CSS shipped in the package) and a JSON API under /api.

Every answer of the API is computed from the database by `Explorer`; errors are JSON objects
`{"error": {"status", "type", "message"}}` with HTTP 400 (bad parameters, a word where a synset is
needed), 404 (no such image, concept or endpoint) or 500.
"""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Iterable

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from convis_db import __version__
from convis_db.errors import ConvisError, NotFoundError, UsageError
from convis_db.web.explorer import ROOT, CacheBudget, Explorer

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent


def _status_of(exc: ConvisError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, UsageError):
        return 400
    return 500


def _error(status: int, kind: str, message: str) -> Response:
    response = jsonify({"error": {"status": status, "type": kind, "message": message}})
    response.status_code = status
    return response


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"parameter {name}={raw!r} is not an integer.") from None
    if not lo <= value <= hi:
        raise UsageError(f"parameter {name}={value} is outside [{lo}, {hi}].")
    return value


def _float_arg(name: str, default: float, lo: float, hi: float) -> float:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"parameter {name}={raw!r} is not a number.") from None
    if not lo <= value <= hi:  # also refuses nan
        raise UsageError(f"parameter {name}={value} is outside [{lo}, {hi}].")
    return value


def _bool_arg(name: str) -> bool:
    raw = request.args.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise UsageError(f"parameter {name}={raw!r} is not a boolean (use 1 or 0).")


def _required(name: str) -> str:
    value = request.args.get(name, "").strip()
    if not value:
        raise UsageError(f"parameter {name} is required (a synset name such as dog.n.01).")
    return value


def _picture(data: bytes, etag: str, mimetype: str) -> Response:
    response = Response(data, mimetype=mimetype)
    response.set_etag(etag)
    # The browser keeps it and asks again with If-None-Match; a rebuilt database changes the tag.
    response.headers["Cache-Control"] = "private, no-cache"
    return response.make_conditional(request)


#: Host names the explorer answers to by default. Anything else in the Host header (a DNS-rebinding
#: page's own name, say) gets 400, through Flask's own TRUSTED_HOSTS check.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def create_app(db_path: str | Path | None = None, *, explorer: Explorer | None = None,
               budget: CacheBudget | None = None, trusted_hosts: Iterable[str] | None = None) -> Flask:
    """The explorer app for one database (opened read-only for the app's lifetime).

    It answers only requests whose Host is in `trusted_hosts` (default: the loopback names), so
    a web page that rebinds its own domain to 127.0.0.1 cannot read the database."""
    if explorer is None:
        if db_path is None:
            raise ValueError("create_app needs db_path or explorer")
        explorer = Explorer(db_path, budget)
    app = Flask(__name__, static_folder=str(HERE / "static"), template_folder=str(HERE / "templates"))
    app.json.sort_keys = False
    app.config["TRUSTED_HOSTS"] = list(dict.fromkeys([*LOOPBACK_HOSTS, *(trusted_hosts or ())]))
    app.extensions["convis_explorer"] = explorer
    ex = explorer

    @app.errorhandler(ConvisError)
    def convis_error(exc: ConvisError):
        return _error(_status_of(exc), type(exc).__name__, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if request.path.startswith("/api/") or request.path == "/api":
            return _error(exc.code or 500, type(exc).__name__, exc.description or exc.name)
        return exc

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error on %s", request.path)
        return _error(500, type(exc).__name__, f"internal error: {exc}")

    @app.get("/")
    def index():
        return render_template("index.html", version=__version__, db_name=Path(ex.db_path).name, root=ROOT)

    @app.get("/api/stats")
    def stats():
        return jsonify(ex.stats() | {"version": __version__})

    @app.get("/api/images")
    def images():
        return jsonify(ex.list_images(_int_arg("offset", 0, 0, 10**9), _int_arg("limit", 60, 1, 500)))

    @app.get("/api/images/<int:image_id>")
    def image(image_id: int):
        return jsonify(ex.image_detail(image_id))

    @app.get("/api/images/<int:image_id>/children")
    def children(image_id: int):
        synset = request.args.get("synset", "").strip() or ROOT
        trail = [t for t in request.args.get("trail", "").split(",") if t.strip()]
        return jsonify(ex.children(image_id, synset, [t.strip() for t in trail], _int_arg("limit", 500, 1, 5000)))

    @app.get("/api/images/<int:image_id>/thumb.jpg")
    def thumbnail(image_id: int):
        data, etag = ex.thumbnail_jpeg(image_id, _int_arg("size", 256, 16, 2048))
        return _picture(data, etag, "image/jpeg")

    @app.get("/api/concepts")
    def concepts():
        return jsonify(ex.suggest(request.args.get("q", ""), _int_arg("limit", 10, 1, 100)))

    @app.get("/api/concepts/<synset>")
    def concept(synset: str):
        return jsonify(ex.concept_detail(synset))

    @app.get("/api/search")
    def search():
        return jsonify(ex.search(_required("synset"), limit=_int_arg("limit", 24, 1, 500),
                                 offset=_int_arg("offset", 0, 0, 10**9),
                                 min_score=_float_arg("min_score", 0.0, 0.0, 1.0), only_self=_bool_arg("only_self"),
                                 by=request.args.get("by", "").strip() or None))

    @app.get("/api/map/<int:image_id>/<synset>.png")
    def concept_map(image_id: int, synset: str):
        data, etag = ex.map_png(image_id, synset, style=request.args.get("style", "mask"),
                                threshold=_float_arg("threshold", 0.0, 0.0, 1.0),
                                size=_int_arg("size", 256, 16, 2048), only_self=_bool_arg("only_self"))
        return _picture(data, etag, "image/png")

    return app
