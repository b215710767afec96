"""Label matchers in Alertmanager's syntax: ``name="value"``, ``name!="v"``, ``name=~"re"``, ``name!~"re"``.

Regular expressions are fully anchored, as in Alertmanager; a missing label
matches as the empty string, so ``zone!=""`` means "has a zone".

Matchers come from users (silences, API filters), so a pattern can never hang a worker:
regular expressions run on RE2 (linear time, no backreferences, as Alertmanager's Go
regexp), with a bounded compiled size, and values, label names and matcher lists have
length limits. A bad or oversized matcher is a :class:`MatcherError` (the API's 400).
Linear is not free: one RE2 match from Python costs tens of microseconds, so the total work
is bounded too — a matcher remembers its verdict per label value, silences are compiled once
(:func:`services.alerts.silences.matchers_of`) with their equality matchers first, the
regular expressions of all live silences together have a budget (``silence_max_regex_matchers``),
and the API matches in a worker thread, never on the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import re2

OPS = ("=~", "!~", "!=", "=")
_MATCHER_RE = re.compile(r"^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")
#: Longest matcher value (or pattern), label name, and most matchers in one list.
MAX_VALUE = 1024
MAX_NAME = 128
MAX_MATCHERS = 64
#: RE2's memory budget for one compiled pattern: beyond it, compiling fails (a 400), never a slow match.
RE2_MAX_MEM = 1 << 20
#: Label values whose regex verdict one matcher remembers (then it starts again): alerts repeat their
#: label values (zone, site, alertname), and one RE2 match from Python costs tens of microseconds.
MEMO_SIZE = 4096


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.max_mem = RE2_MAX_MEM
    options.log_errors = False
    return options


_RE2_OPTIONS = _re2_options()


def _utf8(text: str) -> str:
    """Text RE2 can take: lone surrogates (possible in a decoded URL) become U+FFFD."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode(errors="replace").decode()


class MatcherError(ValueError):
    pass


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise MatcherError(f"unknown operator {self.op!r} (use one of {', '.join(OPS)})")
        if len(self.name) > MAX_NAME:
            raise MatcherError(f"label name longer than {MAX_NAME} characters")
        if len(self.value) > MAX_VALUE:
            raise MatcherError(f"value of {self.name!r} longer than {MAX_VALUE} characters")
        if _utf8(self.value) != self.value:
            raise MatcherError(f"value of {self.name!r} is not valid UTF-8")
        if self.op in ("=~", "!~"):
            try:
                object.__setattr__(self, "_re", re2.compile(f"^(?:{self.value})$", _RE2_OPTIONS))
                object.__setattr__(self, "_memo", {})
            except re2.error as exc:
                why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
                raise MatcherError(f"bad regular expression {self.value[:80]!r}: {why} (RE2 syntax)") from None

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.name, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        memo: dict[str, bool] = self._memo  # type: ignore[attr-defined]
        hit = memo.get(got)
        if hit is None:
            hit = self._re.match(_utf8(got)) is not None  # type: ignore[attr-defined]
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[got] = hit
        return hit if self.op == "=~" else not hit

    @property
    def is_regex(self) -> bool:
        return self.op in ("=~", "!~")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "isRegex": self.op in ("=~", "!~"),
            "isEqual": self.op in ("=", "=~"),
        }

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


def parse_matcher(spec: Any) -> Matcher:
    """One matcher from ``'zone="z1"'`` or an API dict ``{name, value, isRegex, isEqual}``."""
    if isinstance(spec, Mapping):
        name, value = spec.get("name"), spec.get("value")
        if not isinstance(name, str) or not isinstance(value, str):
            raise MatcherError("a matcher object needs 'name' and 'value' strings")
        regex, equal = bool(spec.get("isRegex", False)), bool(spec.get("isEqual", True))
        op = {(False, True): "=", (False, False): "!=", (True, True): "=~", (True, False): "!~"}[(regex, equal)]
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
            raise MatcherError(f"bad label name {name[:80]!r}")
        return Matcher(name, op, value)
    if not isinstance(spec, str):
        raise MatcherError(f"a matcher is a string like 'zone=\"z1\"', got {type(spec).__name__}")
    m = _MATCHER_RE.match(spec)
    if not m:
        raise MatcherError(f'cannot parse matcher {spec[:80]!r} (expected name="value", name!=, name=~ or name!~)')
    name, op, raw = m.groups()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        raw = raw[1:-1]
    return Matcher(name, op, raw)


def parse_matchers(specs: Iterable[Any] | None) -> tuple[Matcher, ...]:
    if specs is None:
        return ()
    if isinstance(specs, (str, Mapping)) or not isinstance(specs, Iterable):
        raise MatcherError("matchers must be a list")
    specs = list(specs)
    if len(specs) > MAX_MATCHERS:
        raise MatcherError(f"more than {MAX_MATCHERS} matchers")
    return tuple(parse_matcher(s) for s in specs)


def cheapest_first(matchers: Iterable[Matcher]) -> tuple[Matcher, ...]:
    """The same conjunction with equality matchers before regular expressions (``all`` stops at the first miss)."""
    return tuple(sorted(matchers, key=lambda m: m.is_regex))


def match_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
