"""Silences and matchers from users: server ids, the token's author, limits, time ranges, RE2, dead letters."""

from __future__ import annotations

import time

import pytest

from services.alerts.matchers import MAX_MATCHERS, MAX_VALUE, MatcherError, parse_matcher, parse_matchers
from services.alerts.silences import (
    MAX_MS,
    Limits,
    SilenceError,
    collectable,
    new_silence,
    parse_time_ms,
    rfc3339,
    stored,
    updated_silence,
    view,
)

NOW = 1_800_000_000_000
BODY = {"matchers": ['zone="z1"'], "endsAt": NOW + 3_600_000, "comment": "pump maintenance"}


def test_the_server_assigns_the_id_and_the_author_is_the_token() -> None:
    a = new_silence({**BODY, "createdBy": "someone-else"}, NOW, "alice")
    b = new_silence(BODY, NOW, "alice")
    assert a["created_by"] == "alice" and a["id"] != b["id"] and len(a["id"]) == 36
    with pytest.raises(SilenceError, match="assigned by the server"):
        new_silence({**BODY, "id": "my-own-id"}, NOW, "alice")


def test_an_update_keeps_id_and_author_and_records_the_editor() -> None:
    s = new_silence(BODY, NOW, "alice")
    u = updated_silence(s, {**BODY, "comment": "longer"}, NOW + 1, "admin-bob")
    assert (u["id"], u["created_by"], u["updated_by"], u["comment"]) == (s["id"], "alice", "admin-bob", "longer")
    assert view(u, NOW)["updatedBy"] == "admin-bob"
    with pytest.raises(SilenceError, match="differs"):
        updated_silence(s, {**BODY, "id": "other"}, NOW, "alice")


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"matchers": ['zone="z"'] * 33}, "at most 32"),
        ({"comment": "x" * 2001}, "at most 2000"),
        ({"comment": ["not", "text"]}, "comment"),
        ({"comment": None}, "comment"),
        ({"endsAt": NOW + 400 * 86_400_000}, "at most"),
        ({"endsAt": 10**30}, "out of range"),
        ({"endsAt": -1}, "out of range"),
        ({"endsAt": float("inf")}, "out of range"),
        ({"endsAt": float("nan")}, "out of range"),
        ({"endsAt": "99999-01-01T00:00:00Z"}, "not an RFC 3339"),
        ({"startsAt": "0001-01-01T00:00:00+23:59"}, "out of range"),
        ({"endsAt": "9999-12-31T23:59:59-23:59"}, "out of range"),
        ({"endsAt": "2030-01-01T00:00:00"}, "timezone"),
        ({"matchers": [{"name": "zone", "value": [[[]]]}]}, "strings"),
        ({"matchers": 'zone="z"'}, "must be a list"),
        ({"matchers": [f'zone=~"{"a" * (MAX_VALUE + 1)}"']}, "longer than"),
        ({"matchers": ['zone=~"("']}, "bad regular expression"),
        ({"matchers": ['zone=~".*"']}, "every alert"),
    ],
)
def test_bad_silences_are_refused_with_the_reason(change, complaint) -> None:
    with pytest.raises(SilenceError, match=complaint):
        new_silence({**BODY, **change}, NOW, "alice", Limits(max_matchers=32, max_comment=2000))


def test_times_at_the_edges_of_the_range_render() -> None:
    assert parse_time_ms(MAX_MS, "endsAt") == MAX_MS and rfc3339(MAX_MS).startswith("9999-12-31T23:59:59")
    assert parse_time_ms("9999-12-31T23:59:59Z", "endsAt") <= MAX_MS
    assert rfc3339(10**30).startswith("9999")  # a stored value out of range still renders, never a 500


def test_expired_silences_are_collected_after_the_retention() -> None:
    s = new_silence(BODY, NOW, "alice")
    assert collectable([s], s["ends_at"] + 59_999, 60_000) == []
    assert collectable([s], s["ends_at"] + 60_000, 60_000) == [s["id"]]


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        "silence",
        {"id": "a"},
        {**new_silence(BODY, NOW, "a"), "matchers": "zone"},
        {**new_silence(BODY, NOW, "a"), "matchers": []},
        {**new_silence(BODY, NOW, "a"), "matchers": ['zone=~"("']},
        {**new_silence(BODY, NOW, "a"), "ends_at": True},
        {**new_silence(BODY, NOW, "a"), "ends_at": 10**20},
        {**new_silence(BODY, NOW, "a"), "created_by": 7},
    ],
)
def test_a_malformed_stored_silence_is_refused(value) -> None:
    with pytest.raises(SilenceError):
        stored(value)


def test_a_stored_silence_must_match_its_key() -> None:
    s = new_silence(BODY, NOW, "a")
    assert stored(s, s["id"]) is s
    with pytest.raises(SilenceError, match="message key"):
        stored(s, "another-id")


def test_regular_expressions_run_in_linear_time() -> None:
    """The classic catastrophic pattern on a long label: RE2 answers at once, Python's re would not finish."""
    m = parse_matcher('zone=~"(a+)+$"')
    assert m.matches({"zone": "a" * 40}) and not m.matches({"zone": "a" * 100_000 + "!"})
    # Backreferences and lookarounds do not exist in RE2: a clear error, not a slow match.
    for pattern in ("(a)\\1", "(?=a)a", "((a{100}){100}){100}"):
        with pytest.raises(MatcherError, match="RE2"):
            parse_matcher(f'zone=~"{pattern}"')


def test_matcher_limits_and_odd_text() -> None:
    with pytest.raises(MatcherError, match="more than"):
        parse_matchers(['a="b"'] * (MAX_MATCHERS + 1))
    with pytest.raises(MatcherError, match="UTF-8"):
        parse_matcher('zone="\udcff"')
    assert parse_matcher('zone=~".+"').matches({"zone": "\udcff"})  # a label with a lone surrogate is text


def test_a_silence_built_now_is_active() -> None:
    now = int(time.time() * 1000)
    s = new_silence({**BODY, "endsAt": now + 60_000}, now, "a")
    assert view(s, now)["status"]["state"] == "active"


def test_regex_work_is_bounded_memoised_compiled_once_and_cheapest_first() -> None:
    from services.alerts.matchers import MEMO_SIZE, Matcher
    from services.alerts.silences import matchers_of, regex_matchers

    m = Matcher("zone", "=~", "z[0-9]+")
    # More distinct label values than a matcher remembers: the verdicts stay right after the memo starts again.
    for i in range(MEMO_SIZE + 10):
        assert m.matches({"zone": f"z{i}"}) and not m.matches({"zone": f"y{i}"})
    assert len(m._memo) <= MEMO_SIZE  # type: ignore[attr-defined]
    silence = {
        "id": "s1",
        "matchers": [
            {"name": "zone", "value": "z.*", "isRegex": True},
            {"name": "site", "value": "s1", "isRegex": False},
            {"name": "sensor", "value": "a|b", "isRegex": True, "isEqual": False},
        ],
        "starts_at": 0,
        "ends_at": 2_000,
    }
    compiled = matchers_of(silence)
    assert compiled is matchers_of(dict(silence))  # compiled once, not per batch or request
    assert [x.op for x in compiled] == ["=", "=~", "!~"]  # equality first: a miss there costs no regex
    assert regex_matchers([silence, {**silence, "id": "s2"}], now_ms=1_000) == 4
    assert regex_matchers([silence], now_ms=3_000) == 0  # expired silences cost nothing
