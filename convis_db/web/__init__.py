"""The visual explorer (`convis-db serve`): a local web app over one database, opened read-only.

`create_app(db_path)` builds the Flask app (a JSON API under /api and one page of plain HTML, CSS and
JavaScript shipped in this package); `server.build_server` and `server.serve` run it. See docs/web.md.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    """The explorer's Flask app; see convis_db.web.app.create_app."""
    from convis_db.web.app import create_app as _create

    return _create(*args, **kwargs)


__all__ = ["create_app"]
