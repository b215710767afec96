"""Label matchers in Alertmanager's syntax: ``name="value"``, ``name!="v"``, ``name=~"re"``, ``name!~"re"``.

Regular expressions are fully anchored, as in Alertmanager; a missing label
matches as the empty string, so ``zone!=""`` means "has a zone".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

OPS = ("=~", "!~", "!=", "=")
_MATCHER_RE = re.compile(r"^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


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
        if self.op in ("=~", "!~"):
            try:
                object.__setattr__(self, "_re", re.compile(f"^(?:{self.value})$"))
            except re.error as exc:
                raise MatcherError(f"bad regular expression {self.value!r}: {exc}") from None

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.name, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        hit = self._re.match(got) is not None  # type: ignore[attr-defined]
        return hit if self.op == "=~" else not hit

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
        try:
            name, value = str(spec["name"]), str(spec["value"])
        except KeyError as exc:
            raise MatcherError(f"matcher object needs {exc.args[0]!r}") from None
        regex, equal = bool(spec.get("isRegex", False)), bool(spec.get("isEqual", True))
        op = {(False, True): "=", (False, False): "!=", (True, True): "=~", (True, False): "!~"}[(regex, equal)]
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
            raise MatcherError(f"bad label name {name!r}")
        return Matcher(name, op, value)
    if not isinstance(spec, str):
        raise MatcherError(f"a matcher is a string like 'zone=\"z1\"', got {type(spec).__name__}")
    m = _MATCHER_RE.match(spec)
    if not m:
        raise MatcherError(f'cannot parse matcher {spec!r} (expected name="value", name!=, name=~ or name!~)')
    name, op, raw = m.groups()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        raw = raw[1:-1]
    return Matcher(name, op, raw)


def parse_matchers(specs: Iterable[Any] | None) -> tuple[Matcher, ...]:
    if specs is None:
        return ()
    if isinstance(specs, (str, Mapping)):
        raise MatcherError("matchers must be a list")
    return tuple(parse_matcher(s) for s in specs)


def match_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
