"""A memory image: the folded state of the streams a process decides on, kept between batches.

Reading and folding a stream for every message was a round trip and a fold per message; the
process that owns a partition sees every message of its streams anyway, so it keeps what it
folded. An entry is never trusted blindly: a decision taken on it is checked by the optimistic
version check of the write (`shared/batch_write.py`, or the index row a caller reads under a
lock), so a stale entry costs a refused write and a re-read, never a wrong decision. Entries are
put only after a commit, and the oldest make room (bounded, LRU).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

V = TypeVar("V")

#: Entries an image keeps (the streams of the last minutes of a busy service, a few MB).
DEFAULT_MAX_ENTRIES = 20_000


class MemoryImage(Generic[V]):
    """Folded states by stream (or aggregate) id; bounded LRU."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put_all(self, entries: Mapping[str, V]) -> None:
        """After a commit: the states it left (the oldest entries make room)."""
        for key, entry in entries.items():
            self._entries[key] = entry
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._entries.pop(key, None)
