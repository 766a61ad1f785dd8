"""What the property-based suites generate: MQTT topics and payloads, HA states, attributes and
event data, with the awkward cases weighted up (separators, quotes, backslashes, ``#``, ``time``,
empty names, newlines and control characters, lone surrogates, deep nesting, huge numbers,
NaN/Infinity, invalid UTF-8)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

# characters InfluxDB's line protocol, MQTT or JSON treat specially
AWKWARD = (" ", ",", "=", '"', "\\", "#", "\t", "\n", "\r", "\x00", "'", "/", "_", "é", "😀",
           "\u2028", "\x7f", "{", "}", "[", "]", ":")
NAMES = ("time", "time_", "value", "value_", "state", "fired", "a_b", "a", "x_str", "",
         "_", "topic", "retained", "domain", "service", "entity_id", "context_id_str",
         "unit_of_measurement", "#x", "k\\", "\\", "code", "PIN", "api_key")


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each drawn ``weight`` times as often (``st.one_of`` counts the same
    strategy given twice once, so each copy is a strategy of its own)."""
    return st.one_of([strategy.map(_Same()) for weight, strategy in choices
                      for _ in range(weight)])


class _Same:
    """An identity function that is a new object each time (a distinct mapped strategy)."""

    def __call__(self, value):
        return value


def _text(alphabet: st.SearchStrategy, max_size: int) -> st.SearchStrategy:
    return st.text(alphabet=st.one_of(alphabet, st.sampled_from(AWKWARD)), max_size=max_size)


ANY_CHAR = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr))   # lone surrogates
TEXT = _text(st.characters(exclude_categories=("Cs",)), 12)
TEXT_WITH_SURROGATES = _text(ANY_CHAR, 12)
KEY = st.one_of(st.sampled_from(NAMES), TEXT, TEXT.map(lambda t: t + "\\"))


# What Mosquitto accepts in a topic: no control characters (C0, DEL, C1: Cc), no
# non-characters (they are unassigned: Cn), and '/', '+', '#' are MQTT's own.
TOPIC_CHAR = st.one_of(
    st.characters(exclude_categories=("Cs", "Cc", "Cn"), exclude_characters="/+#"),
    st.sampled_from((" ", ",", "=", '"', "\\", "'", "_", "é", "😀")))
TOPIC_LEVEL = st.text(alphabet=TOPIC_CHAR, max_size=10)


def numbers() -> st.SearchStrategy:
    """JSON number tokens, ordinary and not."""
    return st.one_of(
        st.integers(-10**6, 10**6).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.integers(min_value=10**18, max_value=10**400).map(str),
        st.sampled_from(("1e400", "-1e400", "1e-400", "-0", "-0.0", "0.10", "1E5", "NaN",
                         "Infinity", "-Infinity", "1" * 4400)))


def _json_scalar(surrogates: bool) -> st.SearchStrategy:
    return st.one_of(numbers().map(lambda t: _Token(t)), st.booleans(), st.none(),
                     TEXT_WITH_SURROGATES if surrogates else TEXT)


class _Token(str):
    """A number written into JSON text as it is."""


def json_values(surrogates: bool = False) -> st.SearchStrategy:
    """Any JSON value up to three levels deep, mostly scalars (deeper ones: ``nested``)."""
    scalar = _json_scalar(surrogates)
    return weighted((3, scalar), (1, json_containers(surrogates)))


def json_containers(surrogates: bool = False) -> st.SearchStrategy:
    """A JSON object or array up to three levels deep."""
    key = st.one_of(KEY, TEXT_WITH_SURROGATES) if surrogates else KEY
    scalar = _json_scalar(surrogates)
    level1 = weighted((2, scalar), (1, st.lists(scalar, max_size=3)),
                      (1, st.dictionaries(key, scalar, max_size=3)))
    level2 = weighted((2, scalar), (1, st.lists(level1, max_size=2)),
                      (1, st.dictionaries(key, level1, max_size=3)))
    return st.one_of(st.lists(level2, max_size=3), st.dictionaries(key, level2, max_size=4))


def dumps(value) -> str:
    """JSON text; number tokens written as generated, text outside Unicode as \\u escapes."""
    if isinstance(value, _Token):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, str):
        return _string(value)
    return json.dumps(value)


def _string(text: str) -> str:
    try:
        text.encode("utf-8")
        return json.dumps(text, ensure_ascii=False)
    except UnicodeEncodeError:
        return json.dumps(text)


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def mqtt_payloads() -> st.SearchStrategy:
    """Payload bytes."""
    return st.one_of(
        json_containers(surrogates=True).map(lambda v: dumps(v).encode()),
        st.dictionaries(KEY, _json_scalar(False), max_size=6).map(lambda v: dumps(v).encode()),
        numbers().map(str.encode),
        TEXT.map(lambda t: t.encode()),
        TEXT.map(lambda t: json.dumps(t).encode()),
        st.binary(max_size=20),
        st.sampled_from((65, 66, 3000)).map(lambda d: nested(d).encode()),
        st.sampled_from((b"{}", b"[]", b"null", b'""', b"", b" 21.5\n", b"+5", b".5", b"1_0",
                         b"\xd9\xa3", b'{"a":NaN}', b'{"time":1700000000}',
                         b'{"a":"\\ud800"}', b'{"k\\\\":0.19,"temp":"\\\\"}',
                         b'{"a\\nb":1}', b'{"s":"two\\nlines"}')))


def mqtt_messages() -> st.SearchStrategy:
    """(measurement level, rest of the topic, payload): published to
    ``fz/<index>/<measurement level>[/<rest>]``."""
    rest = st.lists(TOPIC_LEVEL, max_size=3).map("/".join)
    level = st.text(alphabet=TOPIC_CHAR, min_size=1, max_size=10)
    return st.tuples(weighted((9, level), (1, st.just(""))), rest, mqtt_payloads())


def attributes(surrogates: bool = False) -> st.SearchStrategy:
    """HA state attributes (values any JSON; integers within 64 bits, as HA's JSON carries)."""
    value = json_values(surrogates).map(_ha_json)
    key = st.one_of(KEY, TEXT_WITH_SURROGATES) if surrogates else KEY
    unit = st.one_of(st.none(), st.sampled_from(("°C", "#/min", "kW h", "a\\", "%", "")),
                     TEXT)
    return st.tuples(st.dictionaries(key, value, max_size=5), unit).map(
        lambda pair: pair[0] if pair[1] is None else {**pair[0], "unit_of_measurement": pair[1]})


def _ha_json(value):
    """A generated value as HA holds it after JSON: numbers as Python numbers, 64-bit ints."""
    if isinstance(value, _Token):
        if len(value) > 4000:
            return None
        number = json.loads(value, parse_constant=lambda c: None)
        if isinstance(number, int) and not -2**63 <= number < 2**63:
            return None
        if isinstance(number, float) and (number != number or number in (float("inf"),
                                                                          float("-inf"))):
            return None
        return number
    if isinstance(value, dict):
        return {k: _ha_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ha_json(v) for v in value]
    return value


def states(surrogates: bool = False) -> st.SearchStrategy:
    """A state text (HA allows up to 255 characters)."""
    text = TEXT_WITH_SURROGATES if surrogates else TEXT
    return st.one_of(text, numbers().map(lambda t: t[:255]), st.sampled_from(
        ("on", "off", "home", "unknown", "unavailable", "", "nan", "inf", "1e400", "21.5",
         "v12.5beta", "2024-03-01", "1_000", " 42 ")))


def event_data(surrogates: bool = False) -> st.SearchStrategy:
    """Event data: any JSON object, sometimes with the tag keys and service_data secrets."""
    data = st.dictionaries(st.one_of(KEY, TEXT_WITH_SURROGATES) if surrogates else KEY,
                           json_values(surrogates).map(_ha_json), max_size=5)
    call = st.fixed_dictionaries({
        "domain": st.one_of(TEXT, st.just("alarm_control_panel")),
        "service": st.one_of(TEXT, st.just("alarm_disarm")),
        "service_data": st.dictionaries(KEY, _json_scalar(False).map(_ha_json),
                                        max_size=3).map(lambda d: {**d, "code": "1234",
                                                                   "entity_id": ["x.y", "z.w"]})})
    return st.one_of(data, call, st.tuples(data, call).map(lambda p: {**p[0], **p[1]}))
