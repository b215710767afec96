"""The chart's pods, run here as processes: the rendered command and environment boot each service
on the real stack, and the paths its probes use answer the way the probes assume.

Only what cannot be the same outside Kubernetes is replaced: the broker, Redis and MQTT
addresses (the local stack), the volume paths (temporary directories holding the rendered
ConfigMap files), and the bind address and port (127.0.0.1 and a free port instead of the pod's
0.0.0.0, which these machines must not expose).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.settings import Settings
from tests.helpers import free_port
from tests.unit.test_deploy_settings import ROOT, WEB_SERVICES

CHART = ROOT / "deploy/helm/flowwatch"


def helm_bin() -> str:
    result = subprocess.run(["bash", str(ROOT / "scripts/helm.sh")], capture_output=True, text=True, timeout=890)
    if result.returncode != 0:
        pytest.fail(f"scripts/helm.sh could not build helm:\n{result.stderr}", pytrace=False)
    return result.stdout.strip().splitlines()[-1]


def rendered_pods(settings: Settings) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    result = subprocess.run(
        [
            helm_bin(),
            "template",
            "fw",
            str(CHART),
            "--set",
            f"topics.prefix={settings.topic_prefix},topics.partitions={settings.partitions},topics.replicationFactor=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    workloads = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in docs
        if d["kind"] in ("StatefulSet", "Deployment")
    }
    return docs, workloads


def pod_process_env(
    docs: list[dict[str, Any]], spec: dict[str, Any], stack: Settings, root: Path, port: int
) -> tuple[dict[str, str], list[str]]:
    """The container's environment with pod paths mapped under ``root``; and its command."""
    c = spec["containers"][0]
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(next(d for d in docs if d["metadata"]["name"] == src["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mapping = {}
    for m in c.get("volumeMounts", []):
        local = root / m["mountPath"].strip("/").replace("/", "_")
        local.mkdir(parents=True, exist_ok=True)
        mapping[m["mountPath"]] = str(local)
        cm = volumes.get(m["name"], {}).get("configMap")
        if cm:
            for key, text in next(d for d in docs if d["metadata"]["name"] == cm["name"])["data"].items():
                (local / key).write_text(text)
    for key, value in env.items():
        for pod_path, local in mapping.items():
            if value == pod_path or value.startswith(pod_path + "/"):
                env[key] = local + value[len(pod_path) :]
                break
        else:
            if key.endswith("_DIR") and value.startswith("/"):
                # Not a volume in the pod: on a read-only root nothing may be written there.
                env[key] = str(root / "not-a-volume" / value.strip("/"))
    assert env["FLOWWATCH_WEB_HOST"] == "0.0.0.0" and int(env["FLOWWATCH_WEB_PORT"]) == c["ports"][0]["containerPort"]
    env.update(
        FLOWWATCH_BROKER_URL=stack.broker_url,
        FLOWWATCH_REDIS_URL=stack.redis_url,
        FLOWWATCH_MQTT_URL=stack.mqtt_url,
        FLOWWATCH_WEB_HOST="127.0.0.1",
        FLOWWATCH_WEB_PORT=str(port),
    )
    command = [sys.executable if c["command"][0] == "python" else c["command"][0], *c["command"][1:], *c["args"]]
    return env, command


def probe(port: int, path: str) -> tuple[int, dict[str, Any] | str]:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=3)
        return r.status_code, r.json()
    except (httpx.HTTPError, ValueError) as exc:
        return 0, repr(exc)


async def test_rendered_pods_boot_and_answer_their_probes(settings, tmp_path) -> None:
    docs, workloads = rendered_pods(settings)
    procs: dict[str, tuple[subprocess.Popen[bytes], int, dict[str, Any], Path]] = {}
    try:
        for name in WEB_SERVICES:
            spec = workloads[name]["spec"]["template"]["spec"]
            port = free_port()
            env, command = pod_process_env(docs, spec, settings, tmp_path / name, port)
            log = tmp_path / f"{name}.log"
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=open(log, "wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs[name] = (proc, port, spec["containers"][0], log)

        # Every pod gets through its startup probe, then liveness and readiness behave as configured.
        deadline = time.monotonic() + 180
        pending = set(procs)
        results: dict[str, dict[str, Any]] = {}
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                proc, port, c, log = procs[name]
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                startup, _ = probe(port, c["startupProbe"]["httpGet"]["path"])
                ready, body = probe(port, c["readinessProbe"]["httpGet"]["path"])
                # A pod whose startup probe is not /ready (forecaster) is done once it has joined its
                # group and recovered its tables; only its model may still be missing.
                settled = isinstance(body, dict) and body.get("joined_group") and body.get("tables_recovered")
                if startup == 200 and (ready == 200 or settled):
                    live, _ = probe(port, c["livenessProbe"]["httpGet"]["path"])
                    results[name] = {"live": live, "ready": ready, "body": body}
                    pending.discard(name)
            time.sleep(0.5)
        assert not pending, {n: procs[n][3].read_text()[-2000:] for n in pending}

        for name in ("ingest", "detector", "alerts"):
            assert results[name]["live"] == 200, results[name]
            assert results[name]["ready"] == 200, results[name]
            assert results[name]["body"]["joined_group"] and results[name]["body"]["tables_recovered"]
        # Nothing was written where the pod has no volume (its root filesystem is read-only).
        for name in WEB_SERVICES:
            assert not (tmp_path / name / "not-a-volume").exists(), f"{name} writes outside its volumes"
        # The forecaster with an empty registry: alive, not ready, and /ready says it is the model.
        forecaster = results["forecaster"]
        assert forecaster["live"] == 200, forecaster
        assert forecaster["ready"] == 503 and forecaster["body"]["model"]["ok"] is False, forecaster
        assert forecaster["body"]["joined_group"] and forecaster["body"]["tables_recovered"], forecaster
    finally:
        for proc, *_ in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc, *_ in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(10)
