"""A bounded memo: computed values looked up by key, forgotten all at once when the memo is full.

Names, topics, states and series repeat, so the writer and the collectors compute each once and
look it up afterwards. ``memo[key]`` is a plain dict lookup on a hit (no Python call); on a miss
``compute(key)`` runs, and its result is kept unless the memo holds ``limit`` entries, in which
case everything is forgotten first. An exception from ``compute`` propagates and nothing is kept.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable


class Memo(dict):
    def __init__(self, compute: Callable[[Any], Any], limit: int):
        super().__init__()
        self.compute = compute
        self.limit = limit

    def __missing__(self, key: Hashable) -> Any:
        value = self.compute(key)
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
