"""convis-db explain"""

from __future__ import annotations

import click

from convis_db.cli.context import App, pass_app
from convis_db.cli.output import Result, query_output
from convis_db.query.explain import render_tree


def _flatten(node: dict, level: int = 0, out: list | None = None) -> list[dict]:
    out = [] if out is None else out
    out.append({k: v for k, v in node.items() if k != "children"} | {"level": level})
    for child in node.get("children", []):
        _flatten(child, level + 1, out)
    return out


@click.command("explain")
@click.argument("image")
@click.option("--depth", type=click.IntRange(0, 30), default=4, show_default=True, help="Levels below the root.")
@click.option("--top", type=click.IntRange(1, 1000), default=3, show_default=True, help="Children shown per node.")
@click.option("--root", default="entity.n.01", show_default=True, help="Start the tree here.")
@query_output
@pass_app
def command(app: App, image: str, depth: int, top: int, root: str) -> Result:
    """What CLIP sees in a stored IMAGE: a tree from entity.n.01 down, children ranked by score.

    \b
    Example:
      convis-db explain 1 --depth 6 --top 2
      convis-db explain photos/cat.jpg --root animal.n.01 --json
    """
    with app.database() as db:
        result = db.explain(image, depth=depth, top=top, root=root).as_dict()
    rows = _flatten(result["tree"])
    return Result(rows=rows, data=result, title=f"image {result['image_id']}: {result['path']}",
                  text="\n".join(render_tree(result["tree"])),
                  columns=["level", "synset", "score", "self_score", "peak_x", "peak_y"])
