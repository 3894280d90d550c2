"""A first SIGINT or SIGTERM finishes the image in hand; a second one acts as usual."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopOnSignal:
    """While active (main thread only), a first SIGINT (Ctrl-C) or SIGTERM (kill, a scheduler's stop)
    sets `requested` instead of ending the process, so the image in hand is finished and stored; the
    previous handlers are put back at once, so a second signal acts as usual (Ctrl-C raises
    KeyboardInterrupt, a second SIGTERM terminates; the open transaction is then rolled back)."""

    SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.requested.set()
        self.signal_name = signal.Signals(signum).name
        self._restore()
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send SIGTERM again"
        log.warning("%s: finishing the current image, then stopping (%s to stop at once)", self.signal_name, again)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                try:
                    self._previous[signum] = signal.signal(signum, self._handle)
                except ValueError:  # not allowed here (e.g. an embedded interpreter)
                    pass
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
