"""Progress reporting without printing from the library.

Long steps take a `Progress` factory: `with progress("Embedding definitions", total, "synsets") as tick:`
then `tick(n)` after each batch. The CLI passes a tqdm-backed factory; library callers get a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

Tick = Callable[..., None]


class Progress(Protocol):
    def __call__(self, desc: str, total: int, unit: str = "it") -> contextlib.AbstractContextManager[Tick]: ...


@contextlib.contextmanager
def no_progress(desc: str, total: int, unit: str = "it") -> Iterator[Tick]:
    yield lambda n=1, **postfix: None


def tqdm_progress(enabled: bool = True) -> Progress:
    """A factory of tqdm bars on stderr; disabled bars cost nothing."""

    @contextlib.contextmanager
    def factory(desc: str, total: int, unit: str = "it") -> Iterator[Tick]:
        if not enabled:
            yield lambda n=1, **postfix: None
            return
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
        try:
            def tick(n: int = 1, **postfix) -> None:
                bar.update(n)
                if postfix:
                    bar.set_postfix(postfix, refresh=False)
            yield tick
        finally:
            bar.close()

    return factory
