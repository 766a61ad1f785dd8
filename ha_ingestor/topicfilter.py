"""MQTT topic filters: one set of rules for config validation, the collector and the writer.

MQTT's rules (MQTT 3.1.1 section 4.7, 5.0 section 4.7):

- levels are separated by ``/``; ``+`` matches exactly one level, ``#`` zero or more levels and
  must be the whole last level (``a/#`` also matches ``a``);
- ``+`` and ``#`` fill a whole level (``a+/b`` and ``a/#b`` are refused);
- a topic whose first level starts with ``$`` (``$SYS/...``) is not matched by a filter whose
  first level is a wildcard: ``#`` and ``+/x`` do not match ``$SYS/x``;
- a filter is not empty and holds no NUL character.

The writer's topic rules may name a wildcard (``tele/+device/#rest``): the name is bound to what
the level (or the rest of the topic) holds. Plain filters (``named=False``) refuse names.
"""

from __future__ import annotations

from dataclasses import dataclass


class FilterError(ValueError):
    """A topic filter that breaks MQTT's rules; the message names the filter."""


def validate(topic_filter: str, named: bool = False) -> tuple[str, ...]:
    """Check ``topic_filter``; returns the names its wildcards bind (``named`` filters only)."""
    if not isinstance(topic_filter, str) or not topic_filter:
        raise FilterError("a topic filter must not be empty")
    if "\x00" in topic_filter:
        raise FilterError(f"a topic filter must not hold a NUL character: {topic_filter!r}")
    if len(topic_filter.encode("utf-8")) > 65535:
        raise FilterError("a topic filter must be at most 65535 bytes")
    levels = topic_filter.split("/")
    names: list[str] = []
    for position, level in enumerate(levels):
        wildcard = level[:1] if level[:1] in ("+", "#") else ""
        name = level[1:] if wildcard else ""
        if wildcard == "#" and position != len(levels) - 1:
            raise FilterError(f"'#' must be the last level: {topic_filter!r}")
        if not wildcard and ("+" in level or "#" in level):
            raise FilterError(f"'+' and '#' must fill a whole level: {topic_filter!r}")
        if name and not named:
            raise FilterError(f"'+' and '#' must fill a whole level: {topic_filter!r}")
        if name:
            if not name.isidentifier() or name == "topic" or name in names:
                raise FilterError(f"wildcard names must be unique identifiers other than "
                                  f"'topic': {topic_filter!r}")
            names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class Pattern:
    """One (possibly named) filter, ready to match topics split into levels."""

    filter: str
    levels: tuple[str, ...]

    @classmethod
    def compile(cls, topic_filter: str, named: bool = False) -> "Pattern":
        validate(topic_filter, named)
        return cls(topic_filter, tuple(topic_filter.split("/")))

    def bind(self, levels: list[str] | tuple[str, ...]) -> dict[str, str] | None:
        """The named wildcards' values when the topic's ``levels`` match, else None."""
        if levels and levels[0].startswith("$") and self.levels[0][:1] in ("+", "#"):
            return None
        names: dict[str, str] = {}
        for i, level in enumerate(self.levels):
            first = level[:1]
            if first == "#":
                if level[1:]:
                    names[level[1:]] = "/".join(levels[i:])
                return names
            if i >= len(levels):
                return None
            if first == "+":
                if level[1:]:
                    names[level[1:]] = levels[i]
            elif level != levels[i]:
                return None
        return names if len(levels) == len(self.levels) else None

    def matches(self, topic: str) -> bool:
        return self.bind(topic.split("/")) is not None


class TopicSet:
    """``matches(topic)``: does any of the filters match? Results are cached per topic (a home
    has a few thousand distinct topics); the cache is emptied when it grows past ``cache_size``."""

    def __init__(self, filters, cache_size: int = 65536):
        self.filters = tuple(filters)
        self._patterns = tuple(Pattern.compile(f) for f in self.filters)
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size

    def matches(self, topic: str) -> bool:
        if not self._patterns:
            return False
        hit = self._cache.get(topic)
        if hit is None:
            levels = topic.split("/")
            hit = any(p.bind(levels) is not None for p in self._patterns)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[topic] = hit
        return hit
