"""`make demo`: the whole system on the local stack, stopped with Ctrl-C.

Creates the topics, starts every service as a child process (logs under
.stack/logs/demo/), starts the simulator when it is installed, prints where to
look, and on Ctrl-C (or any child dying) stops everything it started. While it
runs, the detector is retrained from the stream on a schedule (docs/mlops.md):
first after FLOWWATCH_DEMO_RETRAIN_FIRST_S (900), then every
FLOWWATCH_DEMO_RETRAIN_EVERY_S (1800; 0 turns it off), on the last
FLOWWATCH_DEMO_RETRAIN_SINCE (20m); reports in .stack/logs/demo/retrain-*.json.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.registry import ModelRegistry, RegistryError
from shared.settings import DEFAULT_PORTS, Settings
from shared.topics import create_all

ROOT = Path(__file__).resolve().parent.parent
# The stack's directory (scripts/stack.sh's FLOWWATCH_STACK_DIR): the token and logs live beside the stack's own.
STACK_DIR = Path(os.environ.get("FLOWWATCH_STACK_DIR") or ROOT / ".stack")
LOGS = STACK_DIR / "logs" / "demo"
SERVICES = ["ingest", "detector", "forecaster", "alerts", "history", "console"]
# The simulator feeds the live pipeline at a modest rate a laptop can watch.
SIMULATOR = [
    "-m",
    "services.simulator",
    "run",
    "--sink",
    "kafka",
    "--rate",
    os.environ.get("FLOWWATCH_DEMO_RATE", "200"),
]
# Part of the traffic comes the way another system sends it: one site's sensors as a gas station's JSON
# over MQTT, which ingest reads through its `gas-station` payload mapping (they arrive as `gas-<sensor>`).
MAPPED_SIMULATOR = [
    "-m",
    "services.simulator",
    "run",
    "--sink",
    "mqtt",
    "--format",
    "gas-station",
    "--site",
    "oldtown",
    "--rate",
    "40",
]


RETRAIN_FIRST_S = float(os.environ.get("FLOWWATCH_DEMO_RETRAIN_FIRST_S", "900"))
RETRAIN_EVERY_S = float(os.environ.get("FLOWWATCH_DEMO_RETRAIN_EVERY_S", "1800"))
RETRAIN_SINCE = os.environ.get("FLOWWATCH_DEMO_RETRAIN_SINCE", "20m")


class RetrainSchedule:
    """The detector's ``retrain`` as a child process on a schedule; its exit never stops the demo (it says why)."""

    def __init__(self, env: dict[str, str], first_s: float, every_s: float) -> None:
        self.env = env
        self.every_s = every_s
        self.next_at = time.monotonic() + first_s if every_s > 0 else float("inf")
        self.proc: subprocess.Popen[bytes] | None = None
        self.report: Path | None = None

    def tick(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            print(f"==> retrain finished ({self.proc.returncode}): {self.report}")
            self.proc = None
        if self.proc is None and time.monotonic() >= self.next_at:
            self.next_at = time.monotonic() + self.every_s
            self.report = LOGS / f"retrain-{time.strftime('%Y%m%dT%H%M%S')}.json"
            args = ["-m", "services.detector", "retrain", "--since", RETRAIN_SINCE, "--report", str(self.report)]
            self.proc = start("retrain", args, self.env)
            print(f"==> retraining the detector on the last {RETRAIN_SINCE} (log: {LOGS / 'retrain'}.log)")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


def start(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(name: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def ensure_forecaster_model(settings: Settings, env: dict[str, str]) -> None:
    """The forecaster is ready only with a model: train a first one on simulated history, once."""
    try:
        ModelRegistry(settings.model_dir).load("forecaster", alias="production")
        return
    except RegistryError:
        pass
    print("==> training a first forecaster model on 2 days of simulated history (once; about a minute)")
    args = ["-m", "services.forecaster", "train", "--simulate", "2d", "--model-dir", str(settings.model_dir)]
    subprocess.run([sys.executable, *args, "--promote", "production"], cwd=ROOT, env=env, check=True)


def demo_token(env: dict[str, str]) -> Path:
    """One admin token every service's API accepts (FLOWWATCH_API_TOKENS), kept in a 0600 file, never printed.

    Ingest, the detector, the forecaster and the alerts API are closed without a token; the demo
    opens them to whoever can read ``demo-token`` in the stack's directory (``.stack/`` unless
    FLOWWATCH_STACK_DIR says otherwise). Tokens configured by the caller are kept.
    """
    token_file = STACK_DIR / "demo-token"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    if not token_file.exists():
        # Created 0600 from the start: the token is never readable by others, not even for a moment.
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    token_file.chmod(0o600)
    demo = f"admin:{token_file.read_text().strip()}:demo"
    env["FLOWWATCH_API_TOKENS"] = ",".join(t for t in (env.get("FLOWWATCH_API_TOKENS", ""), demo) if t)
    (STACK_DIR / "demo-alerts-token").unlink(missing_ok=True)  # the old per-service token, replaced
    return token_file


def console_access(env: dict[str, str]) -> Path:
    """The console's delegate token (so acks and verdicts carry the operator's name) and an admin user.

    The admin's password is kept in ``demo-admin-password`` (0600) beside ``demo-token``, created once;
    the user is (re)set to it on every start, through the CLI's environment variable, never argv.
    """
    console_token = secrets.token_urlsafe(32)
    env["FLOWWATCH_API_TOKENS"] = ",".join(
        t for t in (env.get("FLOWWATCH_API_TOKENS", ""), f"admin:{console_token}:console") if t
    )
    env["FLOWWATCH_API_DELEGATES"] = ",".join(d for d in (env.get("FLOWWATCH_API_DELEGATES", ""), "console") if d)
    env["FLOWWATCH_CONSOLE_SERVICE_TOKEN"] = console_token
    password_file = STACK_DIR / "demo-admin-password"
    if not password_file.exists():
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18))
    password_file.chmod(0o600)
    user_env = {**env, "FLOWWATCH_CONSOLE_PASSWORD": password_file.read_text().strip()}
    cli = [sys.executable, "-m", "services.console", "users"]
    added = subprocess.run([*cli, "add", "admin", "--role", "admin"], cwd=ROOT, env=user_env, capture_output=True)
    if added.returncode != 0:
        subprocess.run([*cli, "passwd", "admin"], cwd=ROOT, env=user_env, check=True, capture_output=True)
        subprocess.run([*cli, "enable", "admin"], cwd=ROOT, env=user_env, check=True, capture_output=True)
        subprocess.run([*cli, "role", "admin", "admin"], cwd=ROOT, env=user_env, check=True, capture_output=True)
    return password_file


def main() -> int:
    # Ctrl-C (and SIGTERM) stop the demo even when it was started with SIGINT ignored, as a shell
    # script's background job is: otherwise the services stop on the signal and the demo reports them dead.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    settings = Settings.from_env()
    data_dir = Path(os.environ.get("FLOWWATCH_DATA_DIR", ROOT / ".flowwatch"))
    env = {**os.environ, "FLOWWATCH_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    token_file = demo_token(env)
    password_file = console_access(env)
    print("==> creating topics")
    asyncio.run(create_all(settings))
    ensure_forecaster_model(settings, env)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    retrains = RetrainSchedule(env, RETRAIN_FIRST_S, RETRAIN_EVERY_S)
    try:
        for name in SERVICES:
            procs[name] = start(name, ["-m", f"services.{name}", "worker", "--loglevel", "warn"], env)
        for name in SERVICES:
            port = DEFAULT_PORTS[name]
            ok = wait_ready(name, port, procs[name])
            print(
                f"==> {name:10s} {'ready' if ok else 'NOT READY'}  http://127.0.0.1:{port}/ready  (log: {LOGS / name}.log)"
            )
            if not ok and procs[name].poll() is not None:
                print(f"    {name} exited with {procs[name].returncode}; see its log", file=sys.stderr)
                return 1
        if (ROOT / "services" / "simulator" / "__main__.py").exists():
            procs["simulator"] = start("simulator", SIMULATOR, env)
            print(f"==> simulator  feeding readings.raw (log: {LOGS / 'simulator'}.log)")
            procs["simulator-gas-station"] = start("simulator-gas-station", MAPPED_SIMULATOR, env)
            print(
                "==> simulator  also oldtown's sensors as gas-station JSON over MQTT, through ingest's mapping"
                f" (log: {LOGS / 'simulator-gas-station'}.log)"
            )
        auth = f'-H "Authorization: Bearer $(cat {token_file})"'
        print(
            f"\nflowwatch is running. The admin token every API accepts is in {token_file} (mode 0600).\n"
            f"The console: http://127.0.0.1:{DEFAULT_PORTS['console']}/  (user admin, password in {password_file}, "
            f"mode 0600); the public page: http://127.0.0.1:{DEFAULT_PORTS['console']}/public\n"
            "Try:\n"
            "  curl -s http://127.0.0.1:8081/metrics | grep flowwatch_\n"
            f"  curl -s {auth} http://127.0.0.1:8084/v1/alerts\n"
            f"  curl -s {auth} http://127.0.0.1:8082/detector/stats\n"
            f"  curl -s {auth} 'http://127.0.0.1:8085/v1/history/anomaly-rates?by=site,hour&since=1h'\n"
            f"  curl -s {auth} 'http://127.0.0.1:8085/v1/history/export.csv?what=anomalies&since=1h'\n"
            "  curl -s http://127.0.0.1:8082/openapi.json   # each service describes its API\n"
            "  redis-cli --scan --pattern 'flowwatch:*' | head\n"
            f"The detector retrains from the stream {RETRAIN_FIRST_S / 60:.0f} min from now, then every "
            f"{RETRAIN_EVERY_S / 60:.0f} min (reports: {LOGS}/retrain-*.json; docs/mlops.md).\n"
            "Ctrl-C stops everything."
        )
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"==> {name} exited with {proc.returncode}; stopping the demo (see {LOGS / name}.log)")
                    return 1
            retrains.tick()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\n==> stopping")
        return 0
    finally:
        retrains.stop()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
