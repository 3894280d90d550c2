"""convis-db explain-text"""

from __future__ import annotations

import click

from convis_db.cli.context import App, device_option, pass_app
from convis_db.cli.output import Result, query_output
from convis_db.explainers.grad_eclip_text import DEFAULT_TEXT_BLOCKS


@click.command("explain-text")
@click.argument("image")
@click.argument("text", required=False)
@click.option("--concept", default=None,
              help="Explain the words of this synset's definition (the text its embedding is made of) instead "
                   "of TEXT: why the concept matched IMAGE.")
@click.option("--blocks", type=click.IntRange(1, 256), default=DEFAULT_TEXT_BLOCKS, show_default=True,
              help="How many last blocks of the text tower are explained (the authors use 8 of 12; fewer "
                   "layers: all of them).")
@click.option("--tokens", "by_token", is_flag=True, help="The table lists BPE tokens instead of words.")
@device_option
@query_output
@pass_app
def command(app: App, image: str, text: str | None, concept: str | None, blocks: int, by_token: bool,
            device: str) -> Result:
    """Which words of TEXT make it match IMAGE: Grad-ECLIP's textual explanation (Zhao et al., ICML 2024).

    IMAGE is a file or a stored image (id, path or sha256). Each word's weight is its share of the
    image-text match (the weights sum to 1); --json also lists the BPE tokens. With --concept, TEXT is
    the synset's definition: which of its words made the concept match. Nothing is stored.
    See docs/fidelity.md (Grad-ECLIP).

    \b
    Example:
      convis-db explain-text photo.jpg "a dog in a car"
      convis-db explain-text 12 "a red bicycle leaning on a wall" --json
      convis-db explain-text 12 --concept bicycle.n.01
    """
    from convis_db.models.device import resolve_device

    with app.database(resolve_device(device)) as db:
        exp = db.explain_text(image, text, concept=concept, blocks=blocks)
    data = exp.as_dict()
    if by_token:
        rows = [{"position": t.position, "token": t.token, "word": t.word + 1, "weight": t.weight} for t in exp.tokens]
    else:
        rows = [{"word": w.word, "weight": w.weight, "bar": "#" * int(round(w.weight * 40))} for w in exp.words]
    what = f"{exp.synset} ({exp.text!r})" if exp.synset else repr(exp.text)
    title = (f"{exp.image_path}: {what}, cosine {exp.similarity:.4f} "
             f"(Grad-ECLIP over the text tower's last {exp.blocks} blocks)")
    return Result(rows=rows, data=data, title=title, notes=list(exp.notes), wide_columns=("word", "token"))
