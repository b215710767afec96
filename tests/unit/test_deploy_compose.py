"""docker-compose.yml and the Dockerfile, checked statically (Docker cannot run on these machines).

The compose file must parse, and every flowwatch container must get a command that exists and
an environment the code reads (tests/unit/test_deploy_settings.py discovers the settings
dataclasses), bind 0.0.0.0 inside the network and publish its port on 127.0.0.1 only, with
healthchecks on the real /health and /ready. The helper containers (webhook receiver, SMTP
sink) run here for real, with the exact command lines compose gives them.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import smtplib
import socket
import subprocess
import sys
import time
import tomllib
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
import yaml

from shared.settings import DEFAULT_PORTS, Settings
from shared.topics import REGISTRY
from tests.unit.test_deploy_settings import ROOT, WEB_SERVICES, check_service_env, config_env_refs, unknown_env

COMPOSE = ROOT / "docker-compose.yml"
#: Every service with an API in compose: the Faust workers with tables, and history (PostgreSQL, no tables).
COMPOSE_SERVICES = (*WEB_SERVICES, "history")
FLOWWATCH_CONTAINERS = (*COMPOSE_SERVICES, "topics", "history-migrate", "simulator", "forecaster-model")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose variable substitution (`${VAR}`, `${VAR:-default}`, `$$`) with an empty host environment."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, kind, default = m.group(1), m.group(2) or "", m.group(3)
        if kind.endswith("?") and not env.get(name):
            raise MissingVariable(f"{name}: {default}")
        return env.get(name) or (default if default is not None else "")

    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", sub, value.replace("$$", "\0"))
    return text.replace("\0", "$")


class MissingVariable(ValueError):
    """``${VAR:?message}`` with VAR unset: compose refuses to start and prints the message."""


#: What a user exports before `docker compose up` (the compose file header says so).
HOST_ENV = {"FLOWWATCH_INGEST_TOKEN": "laptop-ingest-token-0123456789"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), HOST_ENV)


def test_ingest_never_runs_without_a_token(compose) -> None:
    with pytest.raises(MissingVariable, match="FLOWWATCH_INGEST_TOKEN") as info:
        interpolate(yaml.safe_load(COMPOSE.read_text()))
    assert "POST /v1/readings" in str(info.value)
    assert env_of(compose["services"]["ingest"])["FLOWWATCH_INGEST_TOKEN"] == HOST_ENV["FLOWWATCH_INGEST_TOKEN"]
    # The device token is ingest's alone.
    others = [n for n, svc in compose["services"].items() if n != "ingest"]
    assert not [n for n in others if "FLOWWATCH_INGEST_TOKEN" in env_of(compose["services"][n])]


def test_serving_containers_mount_the_models_read_only(compose) -> None:
    for name in ("detector", "forecaster"):
        assert "models:/models:ro" in compose["services"][name]["volumes"], name
    assert "models:/models" in compose["services"]["forecaster-model"]["volumes"]


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def published(svc: dict[str, Any]) -> list[tuple[str, int, int]]:
    out = []
    for port in svc.get("ports", []):
        host_ip, host_port, container_port = (
            str(port).rsplit(":", 2) if str(port).count(":") == 2 else ("", *str(port).split(":"))
        )
        out.append((host_ip, int(host_port), int(container_port)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"nothing listening on {port} after {timeout}s")


def local_command(command: list[str], svc: dict[str, Any]) -> list[str]:
    """A container command run here: python from the venv, mounted files from the checkout, loopback."""
    mounts = {}
    for vol in svc.get("volumes", []):
        src, _, rest = vol.partition(":")
        if src.startswith("./"):
            mounts[rest.split(":")[0]] = str(ROOT / src[2:])
    out = [sys.executable if command[0] == "python" else command[0]]
    out += [mounts.get(arg, arg).replace("0.0.0.0", "127.0.0.1") for arg in command[1:]]
    return out


# --- the compose file ----------------------------------------------------------------------------


def test_compose_has_the_whole_stack(compose) -> None:
    services = compose["services"]
    assert set(services) >= {
        "kafka",
        "redis",
        "mosquitto",
        "topics",
        *COMPOSE_SERVICES,
        "postgres",
        "history-migrate",
        "simulator",
        "smtp",
        "webhook",
    }
    assert services["kafka"]["image"].startswith("apache/kafka:")
    demo = {"simulator", "forecaster-model"}
    assert all(services[n]["profiles"] == ["demo"] for n in demo)
    assert all("profiles" not in s for n, s in services.items() if n not in demo)


def test_kafka_runs_kraft_without_auto_create(compose) -> None:
    env = env_of(compose["services"]["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters.startswith(env["KAFKA_NODE_ID"] + "@")
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    # The services reach the broker by the address compose gives them.
    broker = env_of(compose["services"]["ingest"])["FLOWWATCH_BROKER_URL"].split("://", 1)[1]
    assert broker in advertised.values()
    protocol_map = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(advertised) <= set(protocol_map)


@pytest.mark.parametrize("name", COMPOSE_SERVICES)
def test_service_command_env_ports_and_healthcheck(compose, name) -> None:
    svc = compose["services"][name]
    assert svc["command"] == ["python", "-m", f"services.{name}", "worker"]
    assert importlib.util.find_spec(f"services.{name}.__main__") is not None

    env = env_of(svc)
    problems = check_service_env(name, env, extra_known=alerts_config_refs(compose) if name == "alerts" else ())
    assert not problems, problems
    settings = Settings.from_env(name, env=env)
    assert settings.web_host == "0.0.0.0", "inside a container the web server must listen on the container's address"
    assert settings.port == DEFAULT_PORTS[name]
    assert settings.broker_url == "kafka://kafka:9092"
    assert settings.redis_url.startswith("redis://redis:")

    # Published on the host's loopback only, to the port the service listens on.
    assert published(svc) == [("127.0.0.1", settings.port, settings.port)]

    # Healthy means alive and ready: both endpoints, on the service's own port.
    test = svc["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = test[3]
    ast.parse(code)
    assert "/health" in code and "/ready" in code
    assert "FLOWWATCH_WEB_PORT" in code  # the port comes from the same variable the service reads

    # Table stores on a named volume at the data dir, models shared where they are loaded.
    mounts = dict(v.split(":")[1::-1] for v in svc["volumes"])
    assert mounts[str(settings.data_dir)] == f"{name}-data"
    if name in ("detector", "forecaster"):
        assert mounts[str(settings.model_dir)] == "models"


def test_ingest_mqtt_url_is_one_ingest_can_connect_to(compose) -> None:
    from services.ingest.mqtt import parse_mqtt_url

    url = Settings.from_env("ingest", env=env_of(compose["services"]["ingest"])).mqtt_url
    parsed = parse_mqtt_url(url)
    assert parsed["hostname"] == "mosquitto"
    conf = (ROOT / "deploy/compose/mosquitto.conf").read_text()
    listener = next(line.split() for line in conf.splitlines() if line.startswith("listener "))
    assert int(listener[1]) == parsed["port"]


def test_healthcheck_fails_unless_both_endpoints_answer(compose) -> None:
    """Run the healthcheck's code against a local server: 200/200 passes, a 503 on /ready fails."""
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    code = compose["services"]["detector"]["healthcheck"]["test"][3]
    statuses = {"/health": 200, "/ready": 200}

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), H)
    Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "FLOWWATCH_WEB_PORT": str(server.server_port)}
    try:
        assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0
        statuses["/ready"] = 503
        assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode != 0
    finally:
        server.shutdown()


def test_dependencies_wait_for_what_they_need(compose) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy but it has no healthcheck"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in (*COMPOSE_SERVICES, "simulator"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["ingest"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert services["topics"]["restart"] == "no"


def test_history_migrates_first_and_alone_holds_the_database_url(compose) -> None:
    """PostgreSQL 15 healthy, then the migrate one-shot, then history; the URL reaches the database compose runs."""
    from urllib.parse import urlsplit

    from services.history.settings import HistorySettings

    services = compose["services"]
    postgres = services["postgres"]
    assert re.fullmatch(r"postgres:15(\.\d+)*(-alpine)?", postgres["image"]), postgres["image"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    migrate, history = services["history-migrate"], services["history"]
    assert migrate["command"] == ["python", "-m", "services.history", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert history["depends_on"]["history-migrate"]["condition"] == "service_completed_successfully"
    assert not check_service_env("history", env_of(migrate), worker=False)
    help_text = subprocess.run(
        [sys.executable, "-m", "services.history", "migrate", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert help_text.returncode == 0, help_text.stderr[-2000:]

    # The migrations ran before the worker started: it must not race the one-shot.
    assert HistorySettings.from_env(env=env_of(history)).migrate_on_start is False
    pg = env_of(postgres)
    for env in (env_of(history), env_of(migrate)):
        url = urlsplit(HistorySettings.from_env(env=env).database_url)
        assert (url.hostname, url.port or 5432) == ("postgres", 5432)
        assert (url.username, url.password, url.path) == (
            pg["POSTGRES_USER"],
            pg["POSTGRES_PASSWORD"],
            "/" + pg["POSTGRES_DB"],
        )
    # The URL holds the password: no other container gets it.
    holders = {n for n, svc in services.items() if "FLOWWATCH_HISTORY_DATABASE_URL" in env_of(svc)}
    assert holders == {"history", "history-migrate"}
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]


def test_every_port_is_published_on_loopback_only(compose) -> None:
    for name, svc in compose["services"].items():
        for host_ip, _, _ in published(svc):
            assert host_ip == "127.0.0.1", f"{name} publishes on {host_ip or 'all interfaces'}"


def test_flowwatch_containers_are_hardened(compose) -> None:
    for name in (*FLOWWATCH_CONTAINERS, "smtp", "webhook"):
        svc = compose["services"][name]
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert "/tmp" in svc["tmpfs"], name


def test_topics_job_creates_the_registry(compose) -> None:
    """The one-shot runs `python -m shared.topics create`; its environment gives the registry's topics."""
    svc = compose["services"]["topics"]
    assert svc["command"] == ["python", "-m", "shared.topics", "create"]
    env = env_of(svc)
    assert not unknown_env(env, "")
    listed = subprocess.run(
        [sys.executable, "-m", "shared.topics", "list"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    settings = Settings.from_env(env=env)
    assert [line.split()[0] for line in listed.splitlines()] == [settings.topic(s.name) for s in REGISTRY]
    assert f"partitions={settings.partitions} " in listed


def test_simulator_command_and_env(compose) -> None:
    svc = compose["services"]["simulator"]
    command = svc["command"]
    assert command[:4] == ["python", "-m", "services.simulator", "run"]
    assert command[command.index("--sink") + 1] == "kafka"
    assert not check_service_env("simulator", env_of(svc))
    assert Settings.from_env(env=env_of(svc)).broker_url == "kafka://kafka:9092"


def test_simulator_cli_accepts_the_compose_arguments(compose) -> None:
    command = compose["services"]["simulator"]["command"]
    result = subprocess.run(
        [sys.executable, *command[1:], "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in (a for a in command[4:] if a.startswith("--")):
        assert flag in result.stdout, f"services.simulator run has no {flag}"


def test_demo_trains_a_forecaster_model_where_the_forecaster_loads_it(compose) -> None:
    """The one-shot trains into the registry the forecaster serves from, and promotes the alias it serves."""
    from services.forecaster.settings import ForecasterSettings

    svc = compose["services"]["forecaster-model"]
    command = svc["command"]
    assert command[:4] == ["python", "-m", "services.forecaster", "train"]
    env = env_of(svc)
    assert not check_service_env("forecaster", env, worker=False)
    model_dir = command[command.index("--model-dir") + 1]
    forecaster = compose["services"]["forecaster"]
    assert f"models:{model_dir}" in svc["volumes"]
    assert str(Settings.from_env("forecaster", env=env_of(forecaster)).model_dir) == model_dir
    assert f"models:{model_dir}:ro" in forecaster["volumes"]
    assert command[command.index("--promote") + 1] == ForecasterSettings.from_env(env=env_of(forecaster)).model_alias
    assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"  # --publish needs the topic
    help_text = subprocess.run(
        [sys.executable, "-m", "services.forecaster", "train", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    for flag in (a for a in command[4:] if a.startswith("--")):
        assert flag in help_text, f"forecaster train has no {flag}"


def alerts_config_refs(compose: dict[str, Any]) -> set[str]:
    return config_env_refs((ROOT / "deploy/compose/alerts.yaml").read_text())


def test_alerts_config_is_valid_and_delivers_to_the_local_receivers(compose) -> None:
    from services.alerts.config import load_config

    svc = compose["services"]["alerts"]
    env = env_of(svc)
    mount = next(v for v in svc["volumes"] if v.startswith("./deploy/compose/alerts.yaml:"))
    assert mount.split(":")[1] == env["FLOWWATCH_ALERTS_CONFIG_PATH"]
    config = load_config(ROOT / "deploy/compose/alerts.yaml", env=env)
    receivers = list(config.receivers.values())
    webhooks = [w for r in receivers for w in r.webhooks]
    emails = [e for r in receivers for e in r.emails]
    port = compose["services"]["webhook"]["command"][-1]
    assert [w.url for w in webhooks] == [f"http://webhook:{port}/alerts"]
    assert webhooks[0].secret == env_of(compose["services"]["webhook"])["WEBHOOK_SECRET"].encode()
    smtp_listen = compose["services"]["smtp"]["command"][compose["services"]["smtp"]["command"].index("-l") + 1]
    assert [(e.host, e.port) for e in emails] == [("smtp", int(smtp_listen.rsplit(":", 1)[1]))]


def test_webhook_receiver_runs_and_checks_signatures(compose) -> None:
    """The receiver container's command, run here: a signed notification is `valid`, a forged one `invalid`."""
    from services.alerts.delivery import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

    svc = compose["services"]["webhook"]
    port = free_port()
    command = local_command(svc["command"], svc)
    command[command.index("--port") + 1] = str(port)
    secret = env_of(svc)["WEBHOOK_SECRET"]
    proc = subprocess.Popen(
        command,
        env={**os.environ, "WEBHOOK_SECRET": secret, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port, proc)
        healthcheck = svc["healthcheck"]["test"][3].replace(":9000/", f":{port}/")
        assert subprocess.run([sys.executable, "-c", healthcheck], timeout=10).returncode == 0
        body = json.dumps({"version": "4", "status": "firing", "alerts": []}).encode()
        ts = str(int(time.time()))
        for sig in (sign(secret.encode(), ts, body), sign(b"wrong", ts, body)):
            r = httpx.post(
                f"http://127.0.0.1:{port}/alerts",
                content=body,
                headers={SIGNATURE_HEADER: sig, TIMESTAMP_HEADER: ts, "Idempotency-Key": "k1"},
            )
            assert r.status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["signature"] for line in lines] == ["valid", "invalid"]
    assert lines[0]["payload"]["status"] == "firing" and lines[0]["idempotency_key"] == "k1"


def test_smtp_sink_runs_and_prints_mail(compose) -> None:
    """The SMTP sink's command (aiosmtpd from the image), run here: a mail sent to it shows in its output."""
    svc = compose["services"]["smtp"]
    port = free_port()
    command = local_command(svc["command"], svc)
    command[command.index("-l") + 1] = f"127.0.0.1:{port}"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, proc)
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "alerts@flowwatch.local", "oncall@flowwatch.local", "[flowwatch] leak"
        msg.set_content("zone north-dma1")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.send_message(msg)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "[flowwatch] leak" in out and "zone north-dma1" in out


def test_named_volumes_are_declared(compose) -> None:
    declared = set(compose["volumes"])
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in declared, f"{name} uses undeclared volume {src}"
            else:
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"


# --- the image -----------------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_image_is_multi_stage_non_root_and_runs_a_service() -> None:
    ins = dockerfile_instructions()
    stages = [rest for op, rest in ins if op == "FROM"]
    assert len(stages) >= 2, "a build stage and a slim run stage"
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM") :]
    user = [rest for op, rest in final if op == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) != 0, user
    cmd = json.loads(next(rest for op, rest in reversed(final) if op == "CMD"))
    assert cmd[:2] == ["python", "-m"] and cmd[3:] == ["worker"]
    assert importlib.util.find_spec(f"{cmd[2]}.__main__") is not None
    env_line = " ".join(rest for op, rest in final if op == "ENV")
    env = dict(shlex.split(pair)[0].split("=", 1) for pair in re.findall(r"[A-Z_]+=\S+", env_line))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "the root filesystem is read-only at run time"
    flowwatch = {k: v for k, v in env.items() if k.startswith("FLOWWATCH_")}
    assert not unknown_env(flowwatch, None)
    assert str(Settings.from_env(env=flowwatch).data_dir) == "/data"


def test_image_copies_what_the_services_need_and_dockerignore_lets_it_through() -> None:
    ins = dockerfile_instructions()
    sources = []
    for op, rest in ins:
        if op == "COPY" and "--from=" not in rest:
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert {"shared/", "services/", "pyproject.toml", "requirements.lock"} <= set(sources)
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignore = [line for line in ignore if line and not line.startswith("#")]
    assert ignore[0] == "*", "allow-list: only what the image needs is sent to the builder"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src in allowed, f"{src} is copied but .dockerignore keeps it out of the build context"


def test_image_installs_the_runtime_dependencies_at_the_locked_versions() -> None:
    """The build installs pyproject's dependencies constrained by requirements.lock: they must agree."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            lock[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", dep.strip())
        assert m, f"{dep!r} is not pinned with =="
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        assert lock.get(name) == m.group(3), f"{dep}: requirements.lock has {lock.get(name)}"
    build = " ".join(rest for op, rest in dockerfile_instructions() if op == "RUN")
    assert "--constraint requirements.lock" in build and "['project']['dependencies']" in build
