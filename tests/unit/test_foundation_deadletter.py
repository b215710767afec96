"""shared.deadletter: quarantine records and dead letters are always writable and always bounded."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.batching import PartitionMap
from shared.deadletter import (
    PAYLOAD_LIMIT,
    bounded_payload,
    cut_text,
    dead_letter,
    quarantine,
    quarantined,
    target_partition,
)

# Kafka's default max.message.bytes; every record must fit with room for the batch overhead.
MAX_MESSAGE_BYTES = 1_048_588


def deep(n: int) -> object:
    value: object = 1
    for _ in range(n):
        value = [value]
    return value


def test_control_characters_do_not_blow_up_the_record() -> None:
    # 200 KB of control characters escape to 1.2 MB of JSON: the record must still fit.
    raw = bytes(range(1, 32)) * (200_000 // 31)
    record = quarantine(raw, ["bad_json: not JSON"], "http")
    assert len(record) < PAYLOAD_LIMIT + 4096
    decoded = orjson.loads(record)
    assert decoded["truncated"] is True
    assert decoded["payload_bytes"] == len(raw)
    assert decoded["payload"] and raw.decode().startswith(decoded["payload"])


def test_too_deep_to_encode_is_kept_as_text() -> None:
    value = {"sensor_id": "s1", "extra": deep(300)}
    raw = orjson.dumps({"sensor_id": "s1"})  # any bytes: the decoded value is what cannot be written
    payload, truncated, _ = bounded_payload(raw, value, True)
    assert payload == raw.decode()
    assert truncated is False
    orjson.loads(quarantine(raw, ["too_deep"], "kafka", decoded=value, decoded_ok=True))


def test_lone_surrogates_and_invalid_utf8_become_replacement_characters() -> None:
    raw = b'{"sensor_id": "\xff\xfe", "x": "\\ud800"}'
    record = orjson.loads(quarantine(raw, ["bad_utf8"], "mqtt"))
    assert "\ufffd" in record["payload"]
    record = orjson.loads(quarantine("a\ud800b", ["surrogate"], "mqtt"))
    assert record["payload"] == "a?b"


def test_reasons_and_keys_are_bounded() -> None:
    record = orjson.loads(
        dead_letter(b"{}", ["x" * 10_000] * 100, "alerts", "silences", key=b"k" * 10_000, partition=3, offset=7)
    )
    assert len(record["reasons"]) == 17 and len(record["reasons"][0]) == 500
    assert len(record["key"]) == 256
    assert (record["topic"], record["partition"], record["offset"]) == ("silences", 3, 7)


def test_one_partition_rule() -> None:
    assert target_partition(b"key", lambda k: 5, 8, 3) == 5
    assert target_partition(None, lambda k: 5, 4, 6) == 2
    assert target_partition(None, lambda k: 5, 4, None) == 0


def test_one_key_rule_for_quarantine_records() -> None:
    pmap = PartitionMap(4)
    # the message's own key: the partition of the key, and the key as the sensor id
    p, key, value = quarantined(b"x", ["r"], "kafka", pmap, 4, key=b"s-1", source_partition=3)
    assert (p, key, orjson.loads(value)["sensor_id"]) == (pmap(b"s-1"), b"s-1", "s-1")
    # no key, but a sensor id found in the message: keyed by it
    p, key, value = quarantined(b"x", ["r"], "kafka", pmap, 4, sensor_id="s-2", source_partition=3)
    assert (p, key, orjson.loads(value)["sensor_id"]) == (pmap(b"s-2"), b"s-2", "s-2")
    # neither: the partition it was read from (modulo the target's count), else 0
    assert quarantined(b"x", ["r"], "kafka", pmap, 4, source_partition=6)[:2] == (2, None)
    assert quarantined(b"x", ["r"], "kafka", pmap, 4, key=b"")[:2] == (0, None)
    # a sensor id that cannot be a key (a lone surrogate) is not kept
    p, key, value = quarantined(b"x", ["r"], "kafka", pmap, 4, sensor_id="s\udc80", source_partition=1)
    assert (p, key, orjson.loads(value)["sensor_id"]) == (1, None, None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000), st.integers(min_value=16, max_value=2000))
def test_cut_text_always_fits(raw: bytes, limit: int) -> None:
    text, cut = cut_text(raw.decode("utf-8", "replace"), limit)
    assert len(orjson.dumps(text)) <= limit
    assert cut == (text != raw.decode("utf-8", "replace"))


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.floats() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=30,
    )
)
def test_any_decoded_value_gives_a_record_under_the_broker_limit(value: object) -> None:
    record = quarantine(repr(value).encode(), ["fuzz"], "kafka", decoded=value, decoded_ok=True)
    assert len(record) < MAX_MESSAGE_BYTES
    orjson.loads(record)
