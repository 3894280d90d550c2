"""A small thread-safe LRU cache with a byte budget: the explorer's maps and pictures, and the map
service's per-image window similarities."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class LRUCache:
    """Least-recently-used entries are dropped once the sizes given to `put` add up past `max_bytes`.

    An entry larger than the whole budget is not kept (the caller simply recomputes it next time).
    Every method takes the cache's own lock, so one cache can be shared by the server's threads.
    """

    def __init__(self, name: str, max_bytes: int):
        self.name = name
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, default: Any = None, *, count: bool = True) -> Any:
        """The value (now the most recent), or `default`; `count=False` leaves hits and misses alone."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += count
                return default
            self._items.move_to_end(key)
            self.hits += count
            return item[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        nbytes = max(int(nbytes), 1)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.max_bytes:
                return
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes and self._items:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def info(self) -> dict:
        with self._lock:
            return {"entries": len(self._items), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses}
