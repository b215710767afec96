"""What the deployment files may set: the FLOWWATCH_* variables the code actually reads.

The helpers here are shared by the compose and Helm tests (imported from this module). They
discover the settings dataclasses generically: ``shared.settings.Settings`` plus every
``services/<name>/settings.py`` that exists, so a service that adds settings is checked without
touching these tests. A variable is known when it is a field of one of those dataclasses, or
when a field named ``*_env`` points at it (``tokens_env = "FLOWWATCH_ALERTS_TOKENS"``: the
value is read from the variable it names), or when an alerts config names it
(``secret_env``, ``auth_password_env``, ``${VAR}``).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
WEB_SERVICES = ("ingest", "detector", "forecaster", "alerts")
# Settings whose code defaults are right on a laptop and wrong in a container (127.0.0.1, relative
# paths): every deployment file must set them.
CONTAINER_REQUIRED = {"FLOWWATCH_BROKER_URL", "FLOWWATCH_REDIS_URL", "FLOWWATCH_DATA_DIR", "FLOWWATCH_MODEL_DIR"}
WEB_REQUIRED = {"FLOWWATCH_WEB_HOST", "FLOWWATCH_WEB_PORT"}
SERVICE_REQUIRED = {"ingest": {"FLOWWATCH_MQTT_URL"}}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


@dataclasses.dataclass(frozen=True)
class SettingsClass:
    service: str  # "" for the shared Settings
    cls: type
    prefix: str

    def env_names(self) -> dict[str, dataclasses.Field]:
        return {f.metadata.get("env", self.prefix + f.name.upper()): f for f in dataclasses.fields(self.cls)}

    def required(self) -> set[str]:
        return {
            name
            for name, f in self.env_names().items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }

    def indirect(self) -> set[str]:
        """Variables named by ``*_env`` fields (their default), read at run time."""
        out = set()
        for f in dataclasses.fields(self.cls):
            if f.name.endswith("_env") and isinstance(f.default, str) and f.default.startswith(ENV_PREFIX):
                out.add(f.default)
        return out

    def load(self, env: dict[str, str]) -> Any:
        """Parse the settings from ``env`` exactly as the service does at start."""
        if self.cls is Settings:
            return Settings.from_env(self.service or None, env=env)
        return self.cls.from_env(env=env)


def settings_classes() -> list[SettingsClass]:
    """The shared Settings and every service settings dataclass that exists right now."""
    found = [SettingsClass("", Settings, ENV_PREFIX)]
    for path in sorted((ROOT / "services").glob("*/settings.py")):
        service = path.parent.name
        module = importlib.import_module(f"services.{service}.settings")
        prefix = getattr(module, "ENV_PREFIX", f"{ENV_PREFIX}{service.upper()}_")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == module.__name__
                and hasattr(obj, "from_env")
            ):
                found.append(SettingsClass(service, obj, prefix))
    return found


def classes_for(service: str) -> list[SettingsClass]:
    return [c for c in settings_classes() if c.service in ("", service)]


def config_env_refs(text: str) -> set[str]:
    """FLOWWATCH_* variables an alerts config reads: secret_env/auth_password_env values and ${VAR}."""
    refs = {
        m.group(1) for line in text.splitlines() if not line.lstrip().startswith("#") for m in _ENV_REF.finditer(line)
    }

    def walk(node: Any) -> Iterable[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and k.endswith("_env") and isinstance(v, str):
                    yield v
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    refs |= set(walk(yaml.safe_load(_ENV_REF.sub("x", text))))
    return {r for r in refs if r.startswith(ENV_PREFIX)}


def unknown_env(names: Iterable[str], service: str | None, extra_known: Iterable[str] = ()) -> set[str]:
    """FLOWWATCH_* names no settings dataclass of ``service`` (any service when None) reads."""
    classes = settings_classes() if service is None else classes_for(service)
    known = set(extra_known)
    for c in classes:
        known |= set(c.env_names()) | c.indirect()
    return {n for n in names if n.startswith(ENV_PREFIX) and n not in known}


def check_service_env(
    service: str,
    env: dict[str, str],
    extra_known: Iterable[str] = (),
    shared: Iterable[str] = (),
    worker: bool = True,
) -> list[str]:
    """Problems with the environment a service container gets; empty when it is right.

    ``shared`` names come from sources every service reads (the chart's settings ConfigMap and
    Secret): they must be read by *some* service. All other names must be read by this one.
    ``worker``: the service's web server runs (not a one-shot command such as `train`).
    """
    problems = []
    shared = set(shared)
    unknown = unknown_env(set(env) - shared, service, extra_known) | unknown_env(shared & set(env), None, extra_known)
    if unknown:
        problems.append(f"{service}: variables no settings dataclass reads: {sorted(unknown)}")
    needed = (
        CONTAINER_REQUIRED
        | SERVICE_REQUIRED.get(service, set())
        | (WEB_REQUIRED if worker and service in WEB_SERVICES else set())
    )
    missing = needed - {k for k, v in env.items() if v}
    if missing:
        problems.append(f"{service}: must be set in a container (the defaults are for a laptop): {sorted(missing)}")
    for c in classes_for(service):
        missing = c.required() - set(env)
        if missing:
            problems.append(f"{service}: required settings not set: {sorted(missing)}")
        try:
            c.load(env)
        except Exception as exc:  # noqa: BLE001 - the reason is the test's message
            problems.append(f"{service}: {c.cls.__name__}.from_env fails: {type(exc).__name__}: {exc}")
    return problems


# --- tests of the discovery itself --------------------------------------------------------------


def test_discovery_finds_the_shared_settings_and_every_service_settings_module() -> None:
    classes = settings_classes()
    assert classes[0].cls is Settings
    modules = {p.parent.name for p in (ROOT / "services").glob("*/settings.py")}
    assert {c.service for c in classes[1:]} == modules
    shared = classes[0].env_names()
    assert {"FLOWWATCH_BROKER_URL", "FLOWWATCH_WEB_HOST", "FLOWWATCH_WEB_PORT", "FLOWWATCH_DATA_DIR"} <= set(shared)


def test_unknown_env_flags_a_misspelt_variable_and_accepts_real_ones() -> None:
    assert unknown_env(["FLOWWATCH_BROKER_URL", "FLOWWATCH_BROKR_URL", "PATH"], "ingest") == {"FLOWWATCH_BROKR_URL"}


def test_service_settings_are_scoped_to_their_service() -> None:
    services = {c.service for c in settings_classes()[1:]}
    if not services:
        pytest.fail("no services/<name>/settings.py found; the discovery would check nothing service-specific")
    service = sorted(services)[0]
    name = next(iter(next(c for c in settings_classes() if c.service == service).env_names()))
    other = next(s for s in WEB_SERVICES if s != service)
    assert not unknown_env([name], service)
    assert unknown_env([name], other) == {name}


def test_shared_variables_may_serve_another_service_but_own_ones_may_not() -> None:
    other = next((n for c in settings_classes() if c.service == "alerts" for n in c.env_names()), None)
    if other is None:
        pytest.fail("services/alerts/settings.py has no settings dataclass")
    assert not any(other in p for p in check_service_env("detector", {other: "x"}, shared={other}))
    assert any(other in p for p in check_service_env("detector", {other: "x"}))


def test_check_service_env_reports_a_value_the_code_cannot_parse() -> None:
    problems = check_service_env("detector", {"FLOWWATCH_PARTITIONS": "four"})
    assert any("FLOWWATCH_PARTITIONS" in p for p in problems), problems


def test_check_service_env_wants_the_container_settings_set() -> None:
    env = {name: "x" for name in CONTAINER_REQUIRED | WEB_REQUIRED}
    env["FLOWWATCH_WEB_PORT"] = "8082"
    assert check_service_env("detector", env) == []
    problems = check_service_env("ingest", env)
    assert problems and "FLOWWATCH_MQTT_URL" in problems[0]
    del env["FLOWWATCH_REDIS_URL"]
    assert "FLOWWATCH_REDIS_URL" in check_service_env("detector", env)[0]


def test_config_env_refs_reads_secret_names_and_substitutions() -> None:
    text = (
        "global: {external_url: '${FLOWWATCH_ALERTS_EXTERNAL_URL:-http://x}'}\n"
        "# ${FLOWWATCH_IN_A_COMMENT}\n"
        "receivers:\n  - name: a\n    webhook_configs: [{url: 'http://h', secret_env: FLOWWATCH_HOOK}]\n"
        "    email_configs: [{auth_password_env: FLOWWATCH_SMTP_PASSWORD, smarthost: 'h:25'}]\n"
    )
    assert config_env_refs(text) == {"FLOWWATCH_ALERTS_EXTERNAL_URL", "FLOWWATCH_HOOK", "FLOWWATCH_SMTP_PASSWORD"}
