"""The property-based suites' frame: generate examples with hypothesis, then judge each one.

Pushing examples through real servers one at a time (as ``@given`` would) is far too slow, so a
suite *draws* its examples first (hypothesis, fixed seed: ``FUZZ_SEED``, default 20261130;
``FUZZ_EXAMPLES`` of them, default 2000), pushes them all through the pipeline, reads everything
back and judges every example against the documented mapping (``tests.support.schema_oracle``):
its point must be in InfluxDB exactly as documented, once, or it must be in ``queue dead`` with a
reason that names its problem. A failure report names the seed, the index and the example, and
is also written to ``fuzz-failures-<suite>.json`` in the test's folder; ``FUZZ_SEED=<seed>
FUZZ_EXAMPLES=<n> make fuzz`` draws the same examples again.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.support.schema_oracle import SKIP, Dead, Point

DEFAULT_SEED = 20261130
DEFAULT_EXAMPLES = 2000


def fuzz_seed() -> int:
    return int(os.environ.get("FUZZ_SEED") or DEFAULT_SEED)


def fuzz_examples() -> int:
    return int(os.environ.get("FUZZ_EXAMPLES") or DEFAULT_EXAMPLES)


def draw(strategy: st.SearchStrategy, count: int, at_seed: int, batch: int = 40) -> list:
    """``count`` examples of ``strategy``, the same ones for the same seed. Hypothesis draws
    them ``batch`` at a time (lists of examples: far less overhead than one test case each)."""
    began = time.monotonic()
    found: list = []

    @settings(max_examples=-(-count // batch), database=None, phases=[Phase.generate],
              deadline=None, suppress_health_check=list(HealthCheck))
    @seed(at_seed)
    @given(st.lists(strategy, min_size=batch, max_size=batch))
    def collect(examples):
        found.extend(examples)

    while len(found) < count:
        collect()
    print(f"\ndrew {count} examples in {time.monotonic() - began:.1f} s")
    return found[:count]


@dataclass
class Judge:
    """Collects the verdict on every example of one suite."""

    suite: str
    folder: Path
    at_seed: int
    failures: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def check(self, index: int, example, expected, points: list[tuple], dead: list[str],
              conflict_explained=lambda: False) -> None:
        """``points``: (measurement, tags, fields) found for the example; ``dead``: reasons
        of its dead letters."""
        problem = self._problem(expected, points, dead, conflict_explained)
        if problem is None:
            self.count({Point: "landed as documented", Dead: "dead letter with its reason"}
                       .get(type(expected), "written nothing, as documented"))
            return
        self.failures.append({"index": index, "example": _printable(example),
                              "expected": _printable(expected), "found_points":
                              _printable(points), "found_dead": dead, "problem": problem})

    def _problem(self, expected, points, dead, conflict_explained) -> str | None:
        if expected is SKIP:
            return None if not points and not dead else "expected nothing written"
        if isinstance(expected, Dead):
            if points:
                return "expected a dead letter, found a point"
            if len(dead) != 1:
                return f"expected one dead letter, found {len(dead)}"
            named = [why for why in expected.why if re.search(why, dead[0])]
            if not named:
                return f"dead letter's reason does not name {expected.why}"
            self.count(f"dead letter: {named[0]}")
            return None
        if dead and not points and len(dead) == 1 and "field type conflict" in dead[0] \
                and conflict_explained():
            self.count("dead letter: field type conflict with another example")
            return None
        if len(points) != 1 or dead:
            return f"expected one point, found {len(points)} point(s), {len(dead)} dead"
        measurement, tags, fields = points[0]
        if measurement != expected.measurement:
            return "measurement differs"
        if tags != expected.tags:
            return "tags differ"
        if not same_fields(fields, expected.fields):
            return "fields differ"
        return None

    def finish(self, examples: int) -> None:
        summary = ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items()))
        print(f"\n{self.suite}: {examples} examples, seed {self.at_seed}: {summary}")
        if not self.failures:
            return
        path = self.folder / f"fuzz-failures-{self.suite}.json"
        path.write_text(json.dumps(self.failures, indent=1, ensure_ascii=True))
        first = "\n".join(json.dumps(f, ensure_ascii=True)[:1500] for f in self.failures[:5])
        pytest.fail(f"{self.suite}: {len(self.failures)} of {examples} examples not as documented "
                    f"(reproduce: FUZZ_SEED={self.at_seed} FUZZ_EXAMPLES={examples}; all in "
                    f"{path}):\n{first}", pytrace=False)


def same_fields(got: dict, expected: dict) -> bool:
    if set(got) != set(expected):
        return False
    for key, value in expected.items():
        other = got[key]
        if isinstance(value, float):
            if type(other) not in (int, float) or float(other) != value:
                return False
        elif other != value:
            return False
    return True


def _printable(value):
    """JSON-able (bytes as latin-1 text, dataclasses as dicts)."""
    if isinstance(value, bytes):
        return {"bytes": value.decode("latin-1")}
    if isinstance(value, Point):
        return {"point": [value.measurement, value.tags, _printable(value.fields)]}
    if isinstance(value, Dead):
        return {"dead": value.why}
    if isinstance(value, dict):
        return {str(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def field_type_conflict(expected: list, index: int) -> bool:
    """Another example's point in the same measurement has one of this point's field keys with
    the other type: InfluxDB rejects whichever comes second."""
    mine = expected[index]
    if not isinstance(mine, Point):
        return False
    kinds = {k: isinstance(v, str) for k, v in mine.fields.items()}
    for j, other in enumerate(expected):
        if j == index or not isinstance(other, Point) or other.measurement != mine.measurement:
            continue
        for key, value in other.fields.items():
            if key in kinds and kinds[key] != isinstance(value, str):
                return True
    return False
