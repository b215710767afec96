"""The alerts YAML: rules, routing tree, inhibition, receivers, mute time intervals.

:func:`load_config` validates the whole file when the service starts; every error
names the file, the rule/route/receiver and the field, e.g.::

    alerts.yaml: rules[1] 'ZoneLeakRisk': when[0]: unknown field 'probabilty' (known: site, zone, ...)

Secrets (webhook HMAC keys, SMTP passwords) are read from the environment variable
or file the config names, checked to exist at start, and never printed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from services.alerts.matchers import Matcher, MatcherError, match_all, parse_matchers
from services.alerts.rules import SOURCES, RateLimit, Rule, RuleError, check_template, parse_condition
from services.alerts.timeintervals import IntervalError, TimeInterval, parse_time_range
from shared.timeutil import parse_duration_s

T = TypeVar("T")
DEFAULT_SHARD_BY = ("site", "zone")


class ConfigError(ValueError):
    """The config cannot be used; the message says where and why."""


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: bytes | None = field(default=None, repr=False)
    timeout_s: float = 5.0
    max_alerts: int = 0
    send_resolved: bool = True
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EmailConfig:
    to: tuple[str, ...]
    sender: str
    host: str
    port: int
    tls: str = "starttls"  # "starttls" | "tls" | "none"
    username: str = ""
    password: str = field(default="", repr=False)
    timeout_s: float = 10.0
    send_resolved: bool = True
    subject_prefix: str = "[flowwatch]"
    ca_file: str = ""  # a private CA to trust for the SMTP server's certificate


@dataclass(frozen=True)
class KafkaConfig:
    topic: str = "alerts"
    send_resolved: bool = True


@dataclass(frozen=True)
class Receiver:
    name: str
    webhooks: tuple[WebhookConfig, ...] = ()
    emails: tuple[EmailConfig, ...] = ()
    kafka: tuple[KafkaConfig, ...] = ()

    def integrations(self) -> list[tuple[str, Any]]:
        """``(integration id, config)`` pairs; the id keys idempotency and the DLQ (``webhook/0``)."""
        out: list[tuple[str, Any]] = []
        out += [(f"webhook/{i}", c) for i, c in enumerate(self.webhooks)]
        out += [(f"email/{i}", c) for i, c in enumerate(self.emails)]
        out += [(f"kafka/{i}", c) for i, c in enumerate(self.kafka)]
        return out


@dataclass(frozen=True)
class Route:
    path: str
    receiver: str
    group_by: tuple[str, ...]
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    matchers: tuple[Matcher, ...] = ()
    continue_: bool = False
    mute_time_intervals: tuple[str, ...] = ()
    active_time_intervals: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()

    def match(self, labels: dict[str, str]) -> list[Route]:
        """Routes that take an alert, depth first, honouring ``continue`` (Alertmanager semantics)."""
        if not match_all(self.matchers, labels):
            return []
        found: list[Route] = []
        for child in self.routes:
            hits = child.match(labels)
            found.extend(hits)
            if hits and not child.continue_:
                break
        return found or [self]

    def walk(self) -> list[Route]:
        out = [self]
        for child in self.routes:
            out.extend(child.walk())
        return out


@dataclass(frozen=True)
class InhibitRule:
    source_matchers: tuple[Matcher, ...]
    target_matchers: tuple[Matcher, ...]
    equal: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    path: Path
    rules: tuple[Rule, ...]
    route: Route
    receivers: dict[str, Receiver]
    inhibit_rules: tuple[InhibitRule, ...] = ()
    time_intervals: dict[str, TimeInterval] = field(default_factory=dict)
    shard_by: tuple[str, ...] = DEFAULT_SHARD_BY
    external_url: str = ""

    def with_external_url(self, url: str) -> Config:
        """This config with the API's public URL from the settings, which wins over the file's when set."""
        return dataclasses.replace(self, external_url=url) if url else self

    @functools.cached_property
    def _rules_by_source(self) -> dict[str, tuple[Rule, ...]]:
        # Asked once per record evaluated: indexed once per config rather than filtered at every call.
        by_source: dict[str, list[Rule]] = {}
        for r in self.rules:
            by_source.setdefault(r.source, []).append(r)
        return {source: tuple(rules) for source, rules in by_source.items()}

    def rules_for(self, source: str) -> tuple[Rule, ...]:
        """The rules on ``source``'s records, in the file's order."""
        return self._rules_by_source.get(source, ())

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def routes(self) -> dict[str, Route]:
        return {r.path: r for r in self.route.walk()}


# ----------------------------------------------------------------------------------------------
# parsing helpers: each raises ConfigError with a "where: field" prefix


class _Ctx:
    def __init__(self, file: str, where: str):
        self.file, self.where = file, where

    def fail(self, fieldname: str, msg: str) -> ConfigError:
        where = f"{self.where}: " if self.where else ""
        return ConfigError(f"{self.file}: {where}{fieldname}: {msg}")

    def get(self, spec: dict[str, Any], name: str, conv: Callable[[Any], T], default: Any = ...) -> T:
        if name not in spec:
            if default is ...:
                raise self.fail(name, "is required")
            return default
        try:
            return conv(spec[name])
        except (ValueError, TypeError, MatcherError, RuleError, IntervalError) as exc:
            raise self.fail(name, str(exc)) from None

    def only(self, spec: Any, known: set[str]) -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise ConfigError(f"{self.file}: {self.where}: must be a mapping, got {type(spec).__name__}")
        unknown = set(spec) - known
        if unknown:
            raise self.fail(", ".join(sorted(map(str, unknown))), f"unknown field (known: {', '.join(sorted(known))})")
        return spec


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _positive(value: Any) -> float:
    seconds = parse_duration_s(value)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def _readable(ctx: _Ctx, spec: dict[str, Any], name: str) -> str:
    path = spec.get(name)
    if not path:
        return ""
    if not Path(str(path)).is_file():
        raise ctx.fail(name, f"{path} is not a readable file")
    return str(path)


def _secret(ctx: _Ctx, spec: dict[str, Any], base: str, env: dict[str, str]) -> str | None:
    """Read ``<base>_env`` or ``<base>_file``; the value itself never appears in an error."""
    env_name, file_name = spec.get(f"{base}_env"), spec.get(f"{base}_file")
    if env_name and file_name:
        raise ctx.fail(f"{base}_env/{base}_file", "give one of the two")
    if env_name:
        value = env.get(str(env_name), "")
        if not value:
            raise ctx.fail(f"{base}_env", f"environment variable {env_name} is not set or empty")
        return value
    if file_name:
        try:
            value = Path(str(file_name)).read_text().strip()
        except OSError as exc:
            raise ctx.fail(f"{base}_file", f"cannot read {file_name}: {exc.strerror}") from None
        if not value:
            raise ctx.fail(f"{base}_file", f"{file_name} is empty")
        return value
    return None


# ----------------------------------------------------------------------------------------------


def _parse_rule(file: str, i: int, spec: Any, default_resolve: float) -> Rule:
    name = spec.get("name") if isinstance(spec, dict) else None
    ctx = _Ctx(file, f"rules[{i}]" + (f" {name!r}" if name else ""))
    ctx.only(spec, {"name", "source", "when", "resolve_when", "labels", "annotations", "resolve_after", "rate_limit"})
    if not isinstance(name, str) or not name.isidentifier():
        raise ctx.fail("name", "is required and must be an identifier like ZoneLeakRisk")
    source = ctx.get(spec, "source", str)
    if source not in SOURCES:
        raise ctx.fail("source", f"unknown source {source!r} (known: {', '.join(SOURCES)})")
    fields = SOURCES[source]

    def conds(key: str) -> tuple:
        raw = spec.get(key, [])
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            raise ctx.fail(key, "must be a list of conditions")
        out = []
        for j, text in enumerate(raw):
            try:
                out.append(parse_condition(text, fields))
            except RuleError as exc:
                raise ctx.fail(f"{key}[{j}]", str(exc)) from None
        return tuple(out)

    when = conds("when")
    if not when:
        raise ctx.fail("when", "needs at least one condition")

    def templates(key: str) -> dict[str, str]:
        raw = spec.get(key, {}) or {}
        if not isinstance(raw, dict):
            raise ctx.fail(key, "must be a mapping of name: template")
        out = {}
        for k, v in raw.items():
            if not isinstance(k, str) or not k.isidentifier():
                raise ctx.fail(f"{key}.{k}", "label and annotation names are identifiers")
            try:
                out[k] = check_template(v, fields)
            except RuleError as exc:
                raise ctx.fail(f"{key}.{k}", str(exc)) from None
        return out

    labels = templates("labels")
    if "alertname" in labels:
        raise ctx.fail("labels.alertname", "is set from the rule name")
    rate_limit = None
    if "rate_limit" in spec:
        rl = spec["rate_limit"]
        rctx = _Ctx(file, f"{ctx.where}: rate_limit")
        rctx.only(rl, {"max_alerts", "per", "collapse_by"})
        max_alerts = rctx.get(rl, "max_alerts", int)
        if max_alerts < 1:
            raise rctx.fail("max_alerts", "must be at least 1")
        collapse_by = rctx.get(rl, "collapse_by", _str_list, ())
        unknown = [c for c in collapse_by if c not in labels]
        if unknown:
            raise rctx.fail("collapse_by", f"{unknown} are not labels of this rule (labels: {sorted(labels)})")
        rate_limit = RateLimit(max_alerts, rctx.get(rl, "per", _positive, 60.0), collapse_by)
    return Rule(
        name=name,
        source=source,
        when=when,
        resolve_when=conds("resolve_when"),
        labels=labels,
        annotations=templates("annotations"),
        resolve_after_s=ctx.get(spec, "resolve_after", _positive, default_resolve),
        rate_limit=rate_limit,
    )


_ROUTE_FIELDS = {
    "receiver",
    "group_by",
    "group_wait",
    "group_interval",
    "repeat_interval",
    "matchers",
    "continue",
    "mute_time_intervals",
    "active_time_intervals",
    "routes",
}


def _parse_route(file: str, spec: Any, path: str, parent: Route | None) -> Route:
    ctx = _Ctx(file, f"route {path}")
    ctx.only(spec, _ROUTE_FIELDS)
    if parent is None:
        if "matchers" in spec:
            raise ctx.fail("matchers", "the root route matches every alert; put matchers on child routes")
        for key in ("receiver",):
            if key not in spec:
                raise ctx.fail(key, "is required on the root route")
    inherit: dict[str, Any] = {}
    if parent is not None:
        inherit = {
            "receiver": parent.receiver,
            "group_by": parent.group_by,
            "group_wait_s": parent.group_wait_s,
            "group_interval_s": parent.group_interval_s,
            "repeat_interval_s": parent.repeat_interval_s,
        }
    route = Route(
        path=path,
        receiver=ctx.get(spec, "receiver", str, inherit.get("receiver", ...)),
        group_by=ctx.get(spec, "group_by", _str_list, inherit.get("group_by", ("alertname",))),
        group_wait_s=ctx.get(spec, "group_wait", parse_duration_s, inherit.get("group_wait_s", 30.0)),
        group_interval_s=ctx.get(spec, "group_interval", _positive, inherit.get("group_interval_s", 300.0)),
        repeat_interval_s=ctx.get(spec, "repeat_interval", _positive, inherit.get("repeat_interval_s", 4 * 3600.0)),
        matchers=ctx.get(spec, "matchers", parse_matchers, ()),
        continue_=ctx.get(spec, "continue", _bool, False),
        mute_time_intervals=ctx.get(spec, "mute_time_intervals", _str_list, ()),
        active_time_intervals=ctx.get(spec, "active_time_intervals", _str_list, ()),
    )
    if "..." in route.group_by and route.group_by != ("...",):
        raise ctx.fail("group_by", "'...' (group by all labels) cannot be combined with other labels")
    children = spec.get("routes", []) or []
    if not isinstance(children, list):
        raise ctx.fail("routes", "must be a list of routes")
    sub = tuple(_parse_route(file, c, f"{path}/{i}", route) for i, c in enumerate(children))
    return Route(**{**route.__dict__, "routes": sub})


def _parse_receiver(file: str, i: int, spec: Any, env: dict[str, str]) -> Receiver:
    name = spec.get("name") if isinstance(spec, dict) else None
    ctx = _Ctx(file, f"receivers[{i}]" + (f" {name!r}" if name else ""))
    ctx.only(spec, {"name", "webhook_configs", "email_configs", "kafka_configs"})
    if not isinstance(name, str) or not name:
        raise ctx.fail("name", "is required")
    webhooks, emails, kafkas = [], [], []
    for j, w in enumerate(spec.get("webhook_configs") or []):
        wctx = _Ctx(file, f"{ctx.where}: webhook_configs[{j}]")
        wctx.only(w, {"url", "secret_env", "secret_file", "timeout", "max_alerts", "send_resolved", "headers"})
        url = wctx.get(w, "url", str)
        if not url.startswith(("http://", "https://")):
            raise wctx.fail("url", f"must be an http(s) URL, got {url!r}")
        secret = _secret(wctx, w, "secret", env)
        headers = wctx.get(w, "headers", dict, {})
        webhooks.append(
            WebhookConfig(
                url=url,
                secret=secret.encode() if secret else None,
                timeout_s=wctx.get(w, "timeout", _positive, 5.0),
                max_alerts=wctx.get(w, "max_alerts", int, 0),
                send_resolved=wctx.get(w, "send_resolved", _bool, True),
                headers={str(k): str(v) for k, v in headers.items()},
            )
        )
    for j, e in enumerate(spec.get("email_configs") or []):
        ectx = _Ctx(file, f"{ctx.where}: email_configs[{j}]")
        known = {"to", "from", "smarthost", "tls", "auth_username", "auth_password_env", "auth_password_file"}
        ectx.only(e, known | {"timeout", "send_resolved", "subject_prefix", "ca_file"})
        to = e.get("to")
        to_list = (to,) if isinstance(to, str) else ectx.get(e, "to", _str_list)
        smarthost = ectx.get(e, "smarthost", str)
        host, _, port = smarthost.rpartition(":")
        if not host or not port.isdigit():
            raise ectx.fail("smarthost", f"must be host:port, got {smarthost!r}")
        tls = ectx.get(e, "tls", str, "starttls")
        if tls not in ("starttls", "tls", "none"):
            raise ectx.fail("tls", f"must be starttls, tls or none, got {tls!r}")
        password = _secret(ectx, e, "auth_password", env) or ""
        username = ectx.get(e, "auth_username", str, "")
        if password and not username:
            raise ectx.fail("auth_username", "is required when a password is given")
        emails.append(
            EmailConfig(
                to=to_list,
                sender=ectx.get(e, "from", str),
                host=host,
                port=int(port),
                tls=tls,
                username=username,
                password=password,
                timeout_s=ectx.get(e, "timeout", _positive, 10.0),
                send_resolved=ectx.get(e, "send_resolved", _bool, True),
                subject_prefix=ectx.get(e, "subject_prefix", str, "[flowwatch]"),
                ca_file=_readable(ectx, e, "ca_file"),
            )
        )
    for j, k in enumerate(spec.get("kafka_configs") or []):
        kctx = _Ctx(file, f"{ctx.where}: kafka_configs[{j}]")
        kctx.only(k, {"topic", "send_resolved"})
        kafkas.append(
            KafkaConfig(
                topic=kctx.get(k, "topic", str, "alerts"), send_resolved=kctx.get(k, "send_resolved", _bool, True)
            )
        )
    return Receiver(name, tuple(webhooks), tuple(emails), tuple(kafkas))


def parse_config(data: Any, file: str = "<config>", env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ if env is None else env)
    top = _Ctx(file, "")
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the config must be a mapping with rules, route and receivers")
    top.only(data, {"global", "rules", "route", "receivers", "inhibit_rules", "time_intervals", "mute_time_intervals"})
    gctx = _Ctx(file, "global")
    glob = gctx.only(data.get("global") or {}, {"resolve_timeout", "shard_by", "external_url"})
    default_resolve = gctx.get(glob, "resolve_timeout", _positive, 300.0)
    shard_by = gctx.get(glob, "shard_by", _str_list, DEFAULT_SHARD_BY)

    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ConfigError(f"{file}: rules: needs a list of at least one rule")
    rules = tuple(_parse_rule(file, i, r, default_resolve) for i, r in enumerate(raw_rules))
    seen: set[str] = set()
    for i, r in enumerate(rules):
        if r.name in seen:
            raise ConfigError(f"{file}: rules[{i}] {r.name!r}: name: duplicate rule name")
        seen.add(r.name)

    intervals: dict[str, TimeInterval] = {}
    for key in ("time_intervals", "mute_time_intervals"):
        for i, spec in enumerate(data.get(key) or []):
            ictx = _Ctx(file, f"{key}[{i}]")
            ictx.only(spec, {"name", "time_intervals"})
            name = ictx.get(spec, "name", str)
            ranges = spec.get("time_intervals")
            if not isinstance(ranges, list) or not ranges:
                raise ictx.fail("time_intervals", "needs a list of at least one interval")
            parsed = []
            for j, r in enumerate(ranges):
                try:
                    parsed.append(parse_time_range(r))
                except IntervalError as exc:
                    raise ictx.fail(f"time_intervals[{j}]", str(exc)) from None
            if name in intervals:
                raise ictx.fail("name", f"duplicate time interval {name!r}")
            intervals[name] = TimeInterval(name, tuple(parsed))

    raw_receivers = data.get("receivers")
    if not isinstance(raw_receivers, list) or not raw_receivers:
        raise ConfigError(f"{file}: receivers: needs a list of at least one receiver")
    receivers: dict[str, Receiver] = {}
    for i, spec in enumerate(raw_receivers):
        rec = _parse_receiver(file, i, spec, env)
        if rec.name in receivers:
            raise ConfigError(f"{file}: receivers[{i}] {rec.name!r}: name: duplicate receiver name")
        receivers[rec.name] = rec

    if "route" not in data:
        raise ConfigError(f"{file}: route: is required")
    route = _parse_route(file, data["route"], "root", None)
    for r in route.walk():
        ctx = _Ctx(file, f"route {r.path}")
        if r.receiver not in receivers:
            raise ctx.fail("receiver", f"unknown receiver {r.receiver!r} (known: {', '.join(receivers)})")
        for name in r.mute_time_intervals + r.active_time_intervals:
            if name not in intervals:
                raise ctx.fail("mute_time_intervals", f"unknown time interval {name!r}")
        missing = [s for s in shard_by if r.group_by != ("...",) and s not in r.group_by]
        if missing:
            raise ctx.fail(
                "group_by",
                f"must include the shard labels {list(shard_by)} (missing {missing}) so that a group lives on one "
                "partition; or set global.shard_by to fewer labels ([] runs every alert through one partition)",
            )

    inhibit = []
    for i, spec in enumerate(data.get("inhibit_rules") or []):
        ictx = _Ctx(file, f"inhibit_rules[{i}]")
        ictx.only(spec, {"source_matchers", "target_matchers", "equal"})
        rule = InhibitRule(
            source_matchers=ictx.get(spec, "source_matchers", parse_matchers),
            target_matchers=ictx.get(spec, "target_matchers", parse_matchers),
            equal=ictx.get(spec, "equal", _str_list, ()),
        )
        missing = [s for s in shard_by if s not in rule.equal]
        if missing:
            raise ictx.fail(
                "equal", f"must include the shard labels {list(shard_by)} (missing {missing}): inhibition is per shard"
            )
        inhibit.append(rule)

    return Config(
        path=Path(file),
        rules=rules,
        route=route,
        receivers=receivers,
        inhibit_rules=tuple(inhibit),
        time_intervals=intervals,
        shard_by=shard_by,
        external_url=gctx.get(glob, "external_url", str, ""),
    )


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: dict[str, str], file: str) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` (URLs, hosts, addresses); an unset VAR without default is an error."""

    def sub(m: re.Match[str]) -> str:
        value = env.get(m.group(1))
        if value is None or value == "":
            if m.group(2) is None:
                line = text.count("\n", 0, m.start()) + 1
                raise ConfigError(
                    f"{file}: line {line}: environment variable {m.group(1)} is not set (and has no :-default)"
                )
            return m.group(2)
        return value

    # Comment lines may mention ${VAR} as documentation; they are left alone.
    return "".join(
        line if line.lstrip().startswith("#") else _ENV_REF.sub(sub, line) for line in text.splitlines(keepends=True)
    )


def load_config(path: Path | str, env: dict[str, str] | None = None) -> Config:
    path = Path(path)
    env = dict(os.environ if env is None else env)
    try:
        text = expand_env(path.read_text(), env, str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path), env)
