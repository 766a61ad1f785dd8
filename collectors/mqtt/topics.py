"""MQTT topic filter matching for ``mqtt.exclude_topics``.

The broker applies the include filters (``mqtt.topics``, our subscriptions); exclusions are matched
here, with MQTT's wildcard rules: ``+`` is exactly one level, ``#`` (last) is zero or more levels
(``a/#`` matches ``a`` too), and topics starting with ``$`` are matched only by filters that
start with the same literal level (``#`` does not match ``$SYS/...``).
"""

from __future__ import annotations

import re


def validate_filter(topic_filter: str) -> None:
    """Raise ValueError naming the filter when it breaks MQTT's wildcard rules."""
    if not topic_filter:
        raise ValueError("topic filter must not be empty")
    levels = topic_filter.split("/")
    for position, level in enumerate(levels):
        if "#" in level and (level != "#" or position != len(levels) - 1):
            raise ValueError(f"'#' must be a whole level and the last one: {topic_filter!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level: {topic_filter!r}")


def filter_regex(topic_filter: str) -> str:
    """A regular expression equivalent to one topic filter."""
    validate_filter(topic_filter)
    levels = topic_filter.split("/")
    parts = []
    for position, level in enumerate(levels):
        if level == "#":
            # 'a/#' also matches the parent 'a' itself; a lone '#' matches everything.
            return "/".join(parts) + "(?:/.*)?" if parts else r"(?!\$).*"
        if level == "+":
            parts.append(r"(?!\$)[^/]*" if position == 0 else "[^/]*")
        else:
            parts.append(re.escape(level))
    return "/".join(parts)


class TopicFilter:
    """``excluded(topic)``: does any exclude filter match? Results are cached per topic (a home
    has a few thousand distinct topics); the cache is cleared when it grows past ``cache_size``."""

    def __init__(self, exclude: tuple[str, ...] | list[str], cache_size: int = 65536):
        self.exclude = tuple(exclude)
        self._pattern = (re.compile("|".join(f"(?:{filter_regex(f)})" for f in self.exclude)
                                    + r"\Z") if self.exclude else None)
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size

    def excluded(self, topic: str) -> bool:
        if self._pattern is None:
            return False
        hit = self._cache.get(topic)
        if hit is None:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            hit = self._cache[topic] = self._pattern.match(topic) is not None
        return hit
