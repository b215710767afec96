"""The Helm chart: lints, renders with the defaults and with every option on, and every manifest
validates offline against the Kubernetes JSON schemas (kubernetes-validate, strict mode) of the
oldest Kubernetes the chart supports and the newest the package ships.

The helm CLI is built from its Go module by scripts/helm.sh (once, into the cache); when that
build fails the tests fail with its output, they never skip.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from shared.settings import DEFAULT_PORTS, Settings
from tests.unit.test_deploy_settings import ROOT, WEB_SERVICES, check_service_env, config_env_refs, unknown_env

CHART = ROOT / "deploy/helm/flowwatch"
ALL_ON = CHART / "ci/all-on-values.yaml"
COMPONENTS = ("ingest", "detector", "forecaster", "alerts", "history", "console", "simulator")
CONSUMERS = (*WEB_SERVICES, "history")
RELEASE, NAMESPACE = "fw", "flowwatch"
# Oldest supported (Chart.yaml kubeVersion) and newest schema set kubernetes-validate ships.
KUBE_VERSIONS = ("1.29.0", kv_utils.latest_version())
# Custom resources: not in the Kubernetes schemas; checked by their own test below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
CONFIGS = {"defaults": (), "all-on": ("-f", str(ALL_ON))}

# The cold build of helm takes ~3 minutes on 2 cores (normally `make helm` has done it already).
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="session")
def helm_bin() -> str:
    result = subprocess.run(["bash", str(ROOT / "scripts/helm.sh")], capture_output=True, text=True, timeout=890)
    if result.returncode != 0:
        pytest.fail(f"scripts/helm.sh could not build helm:\n{result.stdout}\n{result.stderr}", pytrace=False)
    return result.stdout.strip().splitlines()[-1]


def run_helm(helm_bin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_bin, *args], capture_output=True, text=True, timeout=120)


@functools.cache
def _render(helm_bin: str, args: tuple[str, ...], kube_version: str = KUBE_VERSIONS[-1]) -> tuple[dict[str, Any], ...]:
    result = run_helm(
        helm_bin,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        kube_version,
        "--include-crds",
        *args,
    )
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


class RenderError(Exception):
    pass


def render(helm_bin: str, *args: str, kube_version: str = KUBE_VERSIONS[-1]) -> list[dict[str, Any]]:
    """Rendered manifests (copies; tests may change them)."""
    try:
        return copy.deepcopy(list(_render(helm_bin, tuple(args), kube_version)))
    except RenderError as exc:
        pytest.fail(f"helm template {' '.join(args)} failed:\n{exc}", pytrace=False)


def render_error(helm_bin: str, *args: str) -> str:
    try:
        _render(helm_bin, tuple(args))
    except RenderError as exc:
        return str(exc)
    pytest.fail(f"helm template {' '.join(args)} rendered, but it should have refused")


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def component_of(doc: dict[str, Any]) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {component_of(d): d for d in docs if d["kind"] in ("StatefulSet", "Deployment")}


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the chart renders: workloads, hook Job, CronJobs, the test Pod."""
    out = []
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("StatefulSet", "Deployment", "Job"):
            out.append((where, d["spec"]["template"]["spec"]))
        elif d["kind"] == "CronJob":
            out.append((where, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            out.append((where, d["spec"]))
    return out


def shared_env_names(docs: list[dict[str, Any]], container: dict[str, Any]) -> set[str]:
    """Names the container gets from sources every service shares (envFrom: settings and Secret)."""
    names: set[str] = set()
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef") or src.get("secretRef")
        for d in find(docs, "ConfigMap" if "configMapRef" in src else "Secret", ref["name"]):
            names |= set(d.get("data") or {})
    return names


def config_refs(docs: list[dict[str, Any]]) -> set[str]:
    """FLOWWATCH_* names that the rendered config files (alerts rules and routing) read."""
    refs: set[str] = set()
    for cm in find(docs, "ConfigMap"):
        if cm["metadata"]["name"].endswith("-config"):
            for key, text in (cm.get("data") or {}).items():
                if key.endswith((".yaml", ".yml")):
                    refs |= config_env_refs(text)
    return refs


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets: envFrom in order (later wins), then env."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(one(docs, "ConfigMap", src["configMapRef"]["name"])["data"])
        elif "secretRef" in src:
            for secret in find(docs, "Secret", src["secretRef"]["name"]):  # absent: an existing Secret
                env.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<valueFrom>")
    return env


def mounted_files(docs: list[dict[str, Any]], spec: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """Path -> content of every file a container gets from a ConfigMap volume."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files = {}
    for m in container.get("volumeMounts", []):
        vol = volumes.get(m["name"], {})
        if "configMap" in vol:
            for key, content in one(docs, "ConfigMap", vol["configMap"]["name"])["data"].items():
                files[f"{m['mountPath']}/{key}"] = content
    return files


# --- lint and schema validation -------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_helm_lint_strict(helm_bin, config) -> None:
    result = run_helm(helm_bin, "lint", "--strict", str(CHART), *CONFIGS[config])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("config", CONFIGS)
def test_every_manifest_validates_against_the_kubernetes_schemas(helm_bin, config, kube_version) -> None:
    docs = render(helm_bin, *CONFIGS[config], kube_version=kube_version)
    errors = []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except (kv_utils.ValidationError, kv_utils.SchemaNotFoundError) as exc:
            path = "/".join(str(p) for p in getattr(exc, "path", []))
            errors.append(f"{doc['kind']}/{doc['metadata']['name']} {path}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("config", CONFIGS)
def test_no_manifest_has_an_empty_key(helm_bin, config) -> None:
    """`env:` with nothing under it is null: tolerated by the API, but a sign of a template gone wrong."""

    def nulls(node: Any, path: str) -> list[str]:
        if node is None:
            return [path]
        if isinstance(node, dict):
            return [p for k, v in node.items() for p in nulls(v, f"{path}.{k}")]
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in nulls(v, f"{path}[{i}]")]
        return []

    found = [p for d in render(helm_bin, *CONFIGS[config]) for p in nulls(d, f"{d['kind']}/{d['metadata']['name']}")]
    assert not found, found


def test_the_validator_rejects_a_broken_manifest(helm_bin) -> None:
    """Guard against a validation that passes everything: a misspelt field and a wrong type are caught."""
    sts = copy.deepcopy(workloads(render(helm_bin))["detector"])
    sts["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv_utils.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSIONS[-1], strict=True)
    sts = copy.deepcopy(workloads(render(helm_bin))["detector"])
    sts["spec"]["replicas"] = "three"
    with pytest.raises(kv_utils.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSIONS[0], strict=True)


def test_all_on_renders_every_kind_of_resource(helm_bin) -> None:
    kinds = {d["kind"] for d in render(helm_bin, *CONFIGS["all-on"])}
    assert kinds >= {
        "StatefulSet",
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "CronJob",
        "NetworkPolicy",
        "ServiceMonitor",
        "Pod",
    }


def test_values_validate_against_the_chart_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(defaults)


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        (("--set", "detector.replicas=3"), "replicas"),
        (("--set", "ingest.replicaCount=-1"), "replicaCount"),
        (("--set", "kafka.securityProtocol=TLS"), "securityProtocol"),
        (("--set", "kafka.brokers=kafka:9092"), "brokers"),
        (("--set", "alerts.probes.liveness.path=health"), "path"),
        (("--set", "env.LOG_LEVEL=DEBUG"), "LOG_LEVEL"),
    ],
)
def test_schema_rejects_bad_values_with_the_key_named(helm_bin, override, complaint) -> None:
    assert complaint in render_error(helm_bin, *override)


def test_chart_refuses_kubernetes_older_than_it_supports(helm_bin) -> None:
    result = run_helm(helm_bin, "template", RELEASE, str(CHART), "--kube-version", "1.28.0")
    assert result.returncode != 0 and "kubeVersion" in result.stderr


# --- scaling ---------------------------------------------------------------------------------------


def test_components_have_the_same_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def shape(c: dict[str, Any]) -> dict[str, Any]:
        structural = ("autoscaling", "pdb", "persistence", "probes", "service")
        out: dict[str, Any] = {k: None for k in c}
        for key in structural:
            out[key] = {k: sorted(v) if key == "probes" else None for k, v in c[key].items()}
        return out

    shapes = {name: shape(values[name]) for name in COMPONENTS}
    for name in COMPONENTS[1:]:
        assert shapes[name] == shapes[COMPONENTS[0]], name
    assert {
        "replicaCount",
        "autoscaling",
        "pdb",
        "resources",
        "probes",
        "podSecurityContext",
        "securityContext",
    } <= set(shapes["ingest"])
    assert {"nodeSelector", "tolerations", "affinity", "extraEnv"} <= set(shapes["ingest"])


@pytest.mark.parametrize("name", CONSUMERS)
def test_scaling_one_service_is_one_value(helm_bin, name) -> None:
    base = workloads(render(helm_bin))
    scaled = workloads(render(helm_bin, "--set", f"{name}.replicaCount=3"))
    assert scaled[name]["spec"]["replicas"] == 3
    for other in CONSUMERS:
        if other != name:
            assert scaled[other]["spec"] == base[other]["spec"], f"scaling {name} changed {other}"


@pytest.mark.parametrize("name", CONSUMERS)
def test_autoscaling_targets_the_workload_and_leaves_replicas_to_the_hpa(helm_bin, name) -> None:
    docs = render(
        helm_bin,
        "--set",
        f"{name}.autoscaling.enabled=true,{name}.autoscaling.minReplicas=2,{name}.autoscaling.maxReplicas=4",
        "--set",
        f"{name}.autoscaling.targetMemoryUtilizationPercentage=80",
    )
    workload = workloads(docs)[name]
    hpas = [h for h in find(docs, "HorizontalPodAutoscaler") if component_of(h) == name]
    assert len(hpas) == 1 and len(find(docs, "HorizontalPodAutoscaler")) == 1
    spec = hpas[0]["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": workload["kind"],
        "name": workload["metadata"]["name"],
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 4)
    assert {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in spec["metrics"]} == {
        "cpu": 70,
        "memory": 80,
    }
    assert "replicas" not in workload["spec"], (
        "with an HPA the workload must not pin replicas (each upgrade resets them)"
    )
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


@pytest.mark.parametrize("name", CONSUMERS)
@pytest.mark.parametrize(
    "overrides",
    [
        ("{name}.replicaCount=5",),
        ("{name}.autoscaling.enabled=true", "{name}.autoscaling.maxReplicas=5"),
    ],
    ids=["replicaCount", "maxReplicas"],
)
def test_replicas_are_capped_at_the_partition_count(helm_bin, name, overrides) -> None:
    args = ",".join(o.format(name=name) for o in overrides)
    error = render_error(helm_bin, "--set", args)  # topics.partitions defaults to 4
    assert "topics.partitions=4" in error and name in error
    # The same values are fine once the topics have enough partitions.
    render(helm_bin, "--set", args, "--set", "topics.partitions=5")
    # And at exactly the partition count.
    render(helm_bin, "--set", args.replace("=5", "=4"))


def test_the_simulator_is_a_producer_and_not_capped(helm_bin) -> None:
    docs = render(helm_bin, "--set", "simulator.enabled=true,simulator.replicaCount=6")
    assert workloads(docs)["simulator"]["spec"]["replicas"] == 6


def test_autoscaling_needs_a_metric_and_a_sane_range(helm_bin) -> None:
    assert "minReplicas=3 is more than maxReplicas=2" in render_error(
        helm_bin,
        "--set",
        "ingest.autoscaling.enabled=true,ingest.autoscaling.minReplicas=3,ingest.autoscaling.maxReplicas=2",
    )
    assert "without a CPU or memory target" in render_error(
        helm_bin, "--set", "ingest.autoscaling.enabled=true,ingest.autoscaling.targetCPUUtilizationPercentage=0"
    )


@pytest.mark.parametrize("config", CONFIGS)
def test_pdbs_select_their_component_pods(helm_bin, config) -> None:
    docs = render(helm_bin, *CONFIGS[config])
    pods = {name: w["spec"]["template"]["metadata"]["labels"] for name, w in workloads(docs).items()}
    pdbs = find(docs, "PodDisruptionBudget")
    assert pdbs
    for pdb in pdbs:
        selector = pdb["spec"]["selector"]["matchLabels"]
        matching = [n for n, labels in pods.items() if selector.items() <= labels.items()]
        assert matching == [component_of(pdb)]
        assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])


# --- the pods --------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_table_services_are_statefulsets_with_a_claim_per_pod(helm_bin, config) -> None:
    docs = render(helm_bin, *CONFIGS[config])
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    overrides = yaml.safe_load(ALL_ON.read_text()) if config == "all-on" else {}
    for name, w in workloads(docs).items():
        persistent = (
            overrides.get(name, {}).get("persistence", {}).get("enabled", values[name]["persistence"]["enabled"])
        )
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"].get("volumes", [])}
        if persistent:
            assert w["kind"] == "StatefulSet", name
            claims = {c["metadata"]["name"]: c for c in w["spec"]["volumeClaimTemplates"]}
            assert "data" in claims and "data" not in volumes
            assert claims["data"]["spec"]["accessModes"] == ["ReadWriteOnce"]
            assert w["spec"]["podManagementPolicy"] == "Parallel"
            headless = one(docs, "Service", w["spec"]["serviceName"])
            assert headless["spec"]["clusterIP"] == "None"
        else:
            assert w["kind"] == "Deployment", name
            assert "emptyDir" in volumes["data"]
            assert w["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


@pytest.mark.parametrize("config", CONFIGS)
def test_services_get_the_environment_their_settings_read(helm_bin, config) -> None:
    docs = render(helm_bin, *CONFIGS[config])
    for name, w in workloads(docs).items():
        spec = w["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = container_env(docs, container)
        files = mounted_files(docs, spec, container)
        problems = check_service_env(name, env, extra_known=config_refs(docs), shared=shared_env_names(docs, container))
        assert not problems, problems

        settings = Settings.from_env(name, env=env)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert str(settings.data_dir) in mounts and not mounts[str(settings.data_dir)].get("readOnly")
        if name in ("detector", "forecaster"):
            assert str(settings.model_dir) in mounts
        if name == "simulator":
            continue
        # Listens on the pod's address, on the port the container, the Service and the probes use.
        assert settings.web_host in ("0.0.0.0", "::")
        assert settings.port == DEFAULT_PORTS[name]
        assert container["ports"] == [{"name": "http", "containerPort": settings.port, "protocol": "TCP"}]
        svc = one(docs, "Service", w["metadata"]["name"])
        assert svc["spec"]["ports"][0]["port"] == settings.port and svc["spec"]["ports"][0]["targetPort"] == "http"
        assert svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        # Any file a setting points at is really mounted: config from its ConfigMap, secrets from the Secret.
        secret_dir = mounts.get("/var/run/secrets/flowwatch")
        secret_keys = set().union(
            *((d.get("data") or {}).keys() for n in spec_secrets(spec) for d in find(docs, "Secret", n))
        )
        for key, value in env.items():
            if key.endswith(("_PATH", "_FILE")) and value.startswith("/etc/flowwatch/"):
                assert value in files, f"{name}: {key}={value} is not a mounted file ({sorted(files)})"
            if key.endswith("_FILE") and value.startswith("/var/run/secrets/flowwatch/"):
                assert secret_dir and value.rsplit("/", 1)[1] in secret_keys, (
                    f"{name}: {key}={value} is not in the Secret"
                )


@pytest.mark.parametrize("config", CONFIGS)
def test_probes_hit_health_and_ready_on_the_service_port(helm_bin, config) -> None:
    for name, w in workloads(render(helm_bin, *CONFIGS[config])).items():
        if name == "simulator":
            continue
        c = w["spec"]["template"]["spec"]["containers"][0]
        assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
        startup = c["startupProbe"]
        # /ready: a pod gets this long to recover its tables. The forecaster is not ready until a
        # model exists (maybe only after a retrain), so it waits unready instead of being restarted.
        expected = "/health" if name == "forecaster" else "/ready"
        assert startup["httpGet"] == {"path": expected, "port": "http"}
        # The startup budget is what table recovery gets before a restart: minutes, not seconds.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def spec_secrets(spec: dict[str, Any]) -> list[str]:
    """Names of the Secrets projected into a pod's secrets volume (shared first, then its own)."""
    vol = next((v for v in spec.get("volumes", []) if v["name"] == "secrets"), None)
    return [src["secret"]["name"] for src in vol["projected"]["sources"]] if vol else []


def load_ingest_ranges(path: Path, env: dict[str, str]) -> Any:
    from services.ingest.rules import Rules
    from services.ingest.settings import IngestSettings

    return Rules.load(IngestSettings.from_env(env={**env, "FLOWWATCH_INGEST_RANGES_FILE": str(path)}))


def load_alerts_config(path: Path, env: dict[str, str]) -> Any:
    from services.alerts.config import load_config

    return load_config(path, env=env)


# The setting that points each service at a config file the chart mounts, and how the service loads it.
CONFIG_FILES = {
    ("ingest", "ranges.yaml"): ("FLOWWATCH_INGEST_RANGES_FILE", "services/ingest/ranges.yaml", load_ingest_ranges),
    ("alerts", "alerts.yaml"): (
        "FLOWWATCH_ALERTS_CONFIG_PATH",
        "services/alerts/config/alerts.yaml",
        load_alerts_config,
    ),
}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize(("name", "file"), CONFIG_FILES)
def test_config_files_are_mounted_pointed_at_and_accepted_by_the_service(
    helm_bin, tmp_path, config, name, file
) -> None:
    """Rules, routing and ranges come from ConfigMaps; the service loads them with the pod's environment."""
    setting, default_source, loader = CONFIG_FILES[(name, file)]
    docs = render(helm_bin, *CONFIGS[config])
    spec = workloads(docs)[name]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = container_env(docs, container)
    files = mounted_files(docs, spec, container)
    assert env[setting] == f"/etc/flowwatch/{name}/{file}"
    text = files[env[setting]]
    (tmp_path / file).write_text(text)
    assert loader(tmp_path / file, env)
    if config == "defaults":
        # The chart ships the service's own file (a symlink in files/<component>/): it cannot drift.
        assert text.strip() == (ROOT / default_source).read_text().strip()
    # Setting extraEnv (a list, so it replaces the default) does not lose the pointer.
    docs = render(
        helm_bin,
        *CONFIGS[config],
        "--set",
        f"{name}.extraEnv[0].name=FLOWWATCH_LOG_LEVEL,{name}.extraEnv[0].value=DEBUG",
    )
    assert (
        container_env(docs, workloads(docs)[name]["spec"]["template"]["spec"]["containers"][0])[setting] == env[setting]
    )


@pytest.mark.parametrize("config", CONFIGS)
def test_ingest_mqtt_url_is_one_ingest_can_connect_to(helm_bin, config) -> None:
    from services.ingest.mqtt import parse_mqtt_url

    docs = render(helm_bin, *CONFIGS[config])
    env = container_env(docs, workloads(docs)["ingest"]["spec"]["template"]["spec"]["containers"][0])
    assert parse_mqtt_url(Settings.from_env("ingest", env=env).mqtt_url)["hostname"]


def test_secrets_reach_the_services_and_existing_secret_replaces_the_chart_one(helm_bin) -> None:
    docs = render(helm_bin, *CONFIGS["all-on"])
    values = yaml.safe_load(ALL_ON.read_text())["secrets"]
    secret = one(docs, "Secret", "fw-flowwatch")
    c = workloads(docs)["alerts"]["spec"]["template"]["spec"]["containers"][0]
    env = container_env(docs, c)
    assert env["FLOWWATCH_ALERTS_TOKENS"] == "admin:admin-token:ops,viewer:viewer-token"
    # The Secret comes after the ConfigMap: a Redis URL with a password wins over redis.url.
    assert env["FLOWWATCH_REDIS_URL"] == "rediss://:redis-password@redis.example.com:6380/0"
    assert set(secret["data"]) == set(values["env"])
    # No secret value is anywhere but in Secrets.
    for doc in docs:
        if doc["kind"] != "Secret":
            text = yaml.safe_dump(doc)
            for value in ("kafka-password", "redis-password", "webhook-hmac-secret", "smtp-password", "admin-token"):
                assert value not in text, f"{doc['kind']}/{doc['metadata']['name']} contains a secret value"

    docs = render(helm_bin, "--set", "secrets.existingSecret=my-flowwatch-secrets")
    assert not find(docs, "Secret")
    for where, spec in pod_specs(docs):
        if where.startswith("Pod/"):
            continue
        refs = [s["secretRef"]["name"] for c in spec["containers"] for s in c.get("envFrom", []) if "secretRef" in s]
        assert refs == ["my-flowwatch-secrets"], where
    assert "secrets.env is set but" in render_error(helm_bin, "--set", "secrets.create=false,secrets.env.FLOWWATCH_X=1")


def test_each_component_gets_only_its_own_secrets(helm_bin) -> None:
    docs = render(helm_bin, *CONFIGS["all-on"])
    values = yaml.safe_load(ALL_ON.read_text())["secrets"]
    own = {name: set(values["components"].get(name, {})) for name in COMPONENTS}
    every = set().union(*own.values())
    for name, w in workloads(docs).items():
        spec = w["spec"]["template"]["spec"]
        refs = [src["secretRef"]["name"] for src in spec["containers"][0]["envFrom"] if "secretRef" in src]
        env = set().union(*((d.get("data") or {}).keys() for n in refs for d in find(docs, "Secret", n)))
        assert own[name] <= env, name
        assert not (every - own[name]) & env, f"{name} gets another component's secrets"
        assert set(values["env"]) <= env, name
        mounted = set().union(
            *((d.get("data") or {}).keys() for n in spec_secrets(spec) for d in find(docs, "Secret", n))
        )
        assert mounted == own[name] | set(values["env"]), name
    for name in ("ingest", "alerts"):
        assert set(one(docs, "Secret", f"fw-flowwatch-{name}")["data"]) == own[name]


def test_ingest_never_runs_without_a_token(helm_bin) -> None:
    # Nothing given: a token is generated into ingest's own Secret, which only ingest gets.
    docs = render(helm_bin)
    token = base64.b64decode(one(docs, "Secret", "fw-flowwatch-ingest")["data"]["FLOWWATCH_INGEST_TOKEN"]).decode()
    assert len(token) == 48 and token.isalnum()
    env = container_env(docs, workloads(docs)["ingest"]["spec"]["template"]["spec"]["containers"][0])
    assert env["FLOWWATCH_INGEST_TOKEN"] == token
    assert "FLOWWATCH_INGEST_TOKEN" not in container_env(
        docs, workloads(docs)["detector"]["spec"]["template"]["spec"]["containers"][0]
    )
    # A given token is used, not replaced.
    docs = render(helm_bin, "--set", "secrets.components.ingest.FLOWWATCH_INGEST_TOKEN=given-token-0123456789")
    data = one(docs, "Secret", "fw-flowwatch-ingest")["data"]
    assert base64.b64decode(data["FLOWWATCH_INGEST_TOKEN"]).decode() == "given-token-0123456789"
    # No way to give ingest a token: the chart refuses to render, saying what to set.
    for args in ("secrets.create=false", "secrets.generateIngestToken=false"):
        assert "ingest would run without a token" in render_error(helm_bin, "--set", args)
    assert find(
        render(helm_bin, "--set", "secrets.generateIngestToken=false,secrets.env.FLOWWATCH_API_TOKENS=x"), "Secret"
    )
    assert render(helm_bin, "--set", "ingest.enabled=false,secrets.create=false")


def test_serving_pods_mount_the_models_read_only_and_retraining_writes(helm_bin) -> None:
    docs = render(helm_bin, *CONFIGS["all-on"])
    for name in ("detector", "forecaster"):
        container = workloads(docs)[name]["spec"]["template"]["spec"]["containers"][0]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
        assert mount["mountPath"] == "/models" and mount["readOnly"] is True, name
    for cj in find(docs, "CronJob"):
        container = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
        assert not mount.get("readOnly"), component_of(cj)


def test_network_policies_are_on_by_default(helm_bin) -> None:
    docs = render(helm_bin)
    enabled = {name for name, w in workloads(docs).items()}
    assert {component_of(p) for p in find(docs, "NetworkPolicy")} == enabled
    assert not find(render(helm_bin, "--set", "networkPolicy.enabled=false"), "NetworkPolicy")


@pytest.mark.parametrize("config", CONFIGS)
def test_every_pod_runs_hardened(helm_bin, config) -> None:
    docs = render(helm_bin, *CONFIGS[config])
    specs = pod_specs(docs)
    assert len(specs) >= 6
    for where, spec in specs:
        assert spec["automountServiceAccountToken"] is False, where
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0, where
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "resources" in c and c["resources"]["limits"]["memory"], where
            # A read-only root needs a writable /tmp (matplotlib, keras, tempfiles).
            assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])) or where.startswith("Pod/"), where


@pytest.mark.parametrize("config", CONFIGS)
def test_commands_run_the_services_as_documented(helm_bin, config) -> None:
    docs = render(helm_bin, *CONFIGS[config])
    for name, w in workloads(docs).items():
        c = w["spec"]["template"]["spec"]["containers"][0]
        assert c["command"] == ["python", "-m", f"services.{name}"]
        assert c["args"] == (["worker"] if name != "simulator" else ["run", "--sink", "kafka"])
    job = one(docs, "Job", "fw-flowwatch-topics")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "shared.topics", "create"]


def test_retrain_cronjobs_run_the_training_commands(helm_bin) -> None:
    docs = render(helm_bin, *CONFIGS["all-on"])
    cronjobs = {component_of(c): c for c in find(docs, "CronJob")}
    assert set(cronjobs) == {"detector", "forecaster"}
    for name, cj in cronjobs.items():
        spec = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert c["command"] == ["python", "-m", f"services.{name}"]
        # retrain from the stream (a window of readings.clean), not from a file nothing writes
        assert c["args"][0] == "retrain" and "--data" not in c["args"]
        assert "--since" in c["args"]
        assert c["args"][c["args"].index("--model-dir") + 1] == "/models"
        assert "--no-publish" not in c["args"], "a promotion the workers never hear of"
        models = next(v for v in spec["volumes"] if v["name"] == "models")
        assert models["persistentVolumeClaim"]["claimName"] == "fw-flowwatch-models"
        assert cj["spec"]["concurrencyPolicy"] == "Forbid"
        env = container_env(docs, c)
        assert not check_service_env(
            name, env, extra_known=config_refs(docs), shared=shared_env_names(docs, c), worker=False
        )
        assert str(Settings.from_env(name, env=env).model_dir) == "/models"
    # The services load from the same claim the CronJobs write to.
    for name in ("detector", "forecaster"):
        spec = workloads(docs)[name]["spec"]["template"]["spec"]
        models = next(v for v in spec["volumes"] if v["name"] == "models")
        assert models["persistentVolumeClaim"]["claimName"] == "fw-flowwatch-models"
    assert "retrain.enabled needs models.persistence.enabled" in render_error(
        helm_bin, "--set", "retrain.enabled=true,models.persistence.enabled=false"
    )


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("services.detector", ["fit", "--help"]),
        ("services.detector", ["retrain", "--help"]),
        ("services.forecaster", ["train", "--help"]),
        ("services.forecaster", ["retrain", "--help"]),
        ("services.simulator", ["run", "--help"]),
        ("services.history", ["migrate", "--help"]),
    ],
)
def test_the_cli_commands_the_chart_runs_exist(module, args) -> None:
    """CronJobs and the simulator Deployment run these subcommands; each must at least answer --help."""
    assert importlib.util.find_spec(f"{module}.__main__") is not None, f"python -m {module} does not exist yet"
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
        env={
            **os.environ,
            "FLOWWATCH_DATA_DIR": "/tmp/flowwatch-deploy-test",
            "FLOWWATCH_MODEL_DIR": "/tmp/flowwatch-deploy-test/models",
        },
    )
    assert result.returncode == 0, f"python -m {module} {' '.join(args)}:\n{result.stderr[-3000:]}"
    if args[0] in ("fit", "train"):
        assert "--data" in result.stdout and "--model-dir" in result.stdout
    if args[0] == "retrain":
        assert "--since" in result.stdout and "--report" in result.stdout


# --- hooks, tests, monitoring, network -----------------------------------------------------------


def test_topic_job_is_a_pre_install_and_pre_upgrade_hook_with_the_shared_settings(helm_bin) -> None:
    docs = render(helm_bin, *CONFIGS["all-on"])
    job = one(docs, "Job", "fw-flowwatch-topics")
    ann = job["metadata"]["annotations"]
    assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    # The hook runs before the release's ConfigMap and Secret exist: its settings are inline, and
    # the secret values come from a hook-scoped Secret created just before it.
    assert not any("configMapRef" in s for s in c.get("envFrom", []))
    settings_cm = one(docs, "ConfigMap", "fw-flowwatch-settings")["data"]
    inline = {e["name"]: e["value"] for e in c["env"]}
    assert inline == settings_cm
    hook_secret = one(docs, "Secret", c["envFrom"][0]["secretRef"]["name"])
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(ann["helm.sh/hook-weight"])
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == ann["helm.sh/hook"]
    assert hook_secret["data"] == one(docs, "Secret", "fw-flowwatch")["data"]
    # Same environment parsing as the services: the topics and partition count they expect.
    env = container_env(docs, c)
    assert not unknown_env(env, None, extra_known=config_refs(docs))
    s = Settings.from_env(env=env)
    assert (s.topic_prefix, s.partitions, s.replication_factor) == ("prod.", 8, 3)
    listed = subprocess.run(
        [sys.executable, "-m", "shared.topics", "list"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    assert listed.splitlines()[0].startswith("prod.")
    without = find(render(helm_bin, "--set", "topics.create.enabled=false"), "Job")
    assert not [j for j in without if j["metadata"]["name"] == "fw-flowwatch-topics"]


def test_history_migrate_job_is_a_hook_after_the_topics_and_the_workers_leave_it_to_it(helm_bin) -> None:
    docs = render(helm_bin, *CONFIGS["all-on"])
    job = one(docs, "Job", "fw-flowwatch-history-migrate")
    ann = job["metadata"]["annotations"]
    assert set(ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    topics = one(docs, "Job", "fw-flowwatch-topics")["metadata"]["annotations"]
    assert int(ann["helm.sh/hook-weight"]) > int(topics["helm.sh/hook-weight"])
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "services.history", "migrate"]
    hook_secret = one(docs, "Secret", c["envFrom"][0]["secretRef"]["name"])
    assert "FLOWWATCH_HISTORY_DATABASE_URL" in hook_secret["data"]
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(ann["helm.sh/hook-weight"])
    worker = workloads(docs)["history"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "FLOWWATCH_HISTORY_MIGRATE_ON_START", "value": "false"} in worker["env"]
    # Without the Job the workers migrate at start.
    off = render(helm_bin, "--set", "historyStore.migrate.enabled=false")
    assert not [j for j in find(off, "Job") if j["metadata"]["name"].endswith("history-migrate")]
    env = workloads(off)["history"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert all(e["name"] != "FLOWWATCH_HISTORY_MIGRATE_ON_START" for e in env)


@pytest.mark.parametrize("config", CONFIGS)
def test_helm_test_pod_checks_health_and_ready_of_every_service(helm_bin, config) -> None:
    docs = render(helm_bin, *CONFIGS[config])
    pod = next(d for d in docs if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["python", "-c"]
    compile(c["args"][0], "helm-test", "exec")
    urls = c["args"][1:]
    expected = []
    for name, w in workloads(docs).items():
        if name == "simulator":
            continue
        svc = one(docs, "Service", w["metadata"]["name"])
        base = f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
        expected += [f"{base}/health", f"{base}/ready"]
    assert sorted(urls) == sorted(expected)


def test_helm_test_script_reports_failures(tmp_path) -> None:
    """The embedded check exits 0 when every URL answers 2xx, 1 when one does not (fast-failing URL)."""
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    text = (CHART / "templates/tests/test-endpoints.yaml").read_text()
    script = text.split("- |\n", 1)[1].split("        {{-", 1)[0]
    script = "\n".join(line[10:] for line in script.splitlines())
    script = script.replace("time.monotonic() + 120", "time.monotonic() + 1")
    server = HTTPServer(("127.0.0.1", 0), H)
    Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        ok = subprocess.run([sys.executable, "-c", script, f"{base}/health"], capture_output=True, text=True)
        bad = subprocess.run(
            [sys.executable, "-c", script, f"{base}/health", f"{base}/ready"], capture_output=True, text=True
        )
    finally:
        server.shutdown()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert bad.returncode == 1 and "FAIL" in bad.stdout


def test_service_monitor_scrapes_each_service_once(helm_bin) -> None:
    docs = render(helm_bin, *CONFIGS["all-on"])
    sm = one(docs, "ServiceMonitor", "fw-flowwatch")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    selector = sm["spec"]["selector"]["matchLabels"]
    selected = [s for s in find(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert sorted(component_of(s) for s in selected) == sorted((*CONSUMERS, "console"))
    for s in selected:
        assert s["spec"].get("clusterIP") != "None"
        assert [p["name"] for p in s["spec"]["ports"]] == [e["port"] for e in sm["spec"]["endpoints"]]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert not find(render(helm_bin), "ServiceMonitor")


def test_network_policies_open_the_service_port_to_the_release_and_allow_dns(helm_bin) -> None:
    docs = render(helm_bin, *CONFIGS["all-on"])
    policies = {component_of(p): p for p in find(docs, "NetworkPolicy")}
    assert set(policies) == set(COMPONENTS)
    pods = {name: w["spec"]["template"]["metadata"]["labels"] for name, w in workloads(docs).items()}
    test_pod_labels = next(d for d in docs if d["kind"] == "Pod")["metadata"]["labels"]
    for name, p in policies.items():
        spec = p["spec"]
        assert spec["podSelector"]["matchLabels"].items() <= pods[name].items()
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        if name == "simulator":
            assert spec["ingress"] == []
            continue
        rule = spec["ingress"][0]
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        release_peer = rule["from"][0]["podSelector"]["matchLabels"]
        assert release_peer.items() <= test_pod_labels.items(), "the helm test pod must be allowed in"
        assert len(rule["from"]) == 3  # the release + the two configured namespaces
        dns = spec["egress"][0]
        assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}


@pytest.mark.parametrize("config", CONFIGS)
def test_every_resource_has_the_standard_labels(helm_bin, config) -> None:
    docs = render(helm_bin, *CONFIGS[config])
    for d in docs:
        labels = d["metadata"].get("labels", {})
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/part-of",
            "helm.sh/chart",
        ):
            assert key in labels, f"{d['kind']}/{d['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
    for name, w in workloads(docs).items():
        assert w["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == name
        assert w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == name


def test_settings_change_rolls_the_pods(helm_bin) -> None:
    before = workloads(render(helm_bin))["detector"]["spec"]["template"]["metadata"]["annotations"]
    after = workloads(render(helm_bin, "--set", "settings.logLevel=DEBUG"))["detector"]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert before["checksum/settings"] != after["checksum/settings"]
    assert before["checksum/secret"] == after["checksum/secret"]


def test_notes_tell_how_to_check_and_scale(helm_bin) -> None:
    result = run_helm(
        helm_bin,
        "install",
        RELEASE,
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
        "--set",
        "ingest.replicaCount=2",
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"helm test {RELEASE}" in notes
    assert "detector.replicaCount" in notes and "at most 4 replicas" in notes
    assert "fw-flowwatch-detector" in notes
    # Standby replicas with a single worker: named, except for ingest which now has two.
    standby = next(line for line in notes.splitlines() if "standbyReplicas" in line)
    assert "detector" in standby and "ingest" not in standby


def test_docs_values_table_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy/helm/values_table.py"), "--check", str(ROOT / "docs/deploy.md")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_values_table_documents_every_component_key() -> None:
    sys.path.insert(0, str(ROOT / "deploy/helm"))
    try:
        import values_table
    finally:
        sys.path.pop(0)
    documented = {path for path, _ in values_table.documented_keys((CHART / "values.yaml").read_text())}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key, value in values["ingest"].items():
        if isinstance(value, dict) and key in ("autoscaling", "pdb", "persistence", "probes", "service"):
            for sub in value:
                assert f"ingest.{key}.{sub}" in documented, f"ingest.{key}.{sub} is not documented"
        else:
            assert f"ingest.{key}" in documented, f"ingest.{key} is not documented"


def test_helm_script_builds_into_the_cache_dir(helm_bin) -> None:
    """The binary lives under ${FLOWWATCH_CACHE:-~/.cache/flowwatch}/bin and is the pinned version."""
    cache = Path(os.environ.get("FLOWWATCH_CACHE", Path.home() / ".cache/flowwatch"))
    assert Path(helm_bin) == cache / "bin/helm"
    version = run_helm(helm_bin, "version", "--template", "{{.Version}}").stdout
    pinned = (
        next(
            line.split('"')[1]
            for line in (ROOT / "scripts/helm.sh").read_text().splitlines()
            if line.startswith("HELM_VERSION=")
        )
        .split(":-")[1]
        .rstrip("}")
    )
    assert version == pinned


def test_helm_script_fails_loudly_when_it_cannot_build(tmp_path) -> None:
    """A version the module proxy does not have: a non-zero exit that says why, and no binary."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/helm.sh")],
        env={**os.environ, "HELM_VERSION": "v3.999.0", "FLOWWATCH_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "could not build helm v3.999.0" in result.stderr
    assert not (tmp_path / "bin/helm").exists() and result.stdout == ""


@pytest.mark.parametrize("config", CONFIGS)
def test_each_ingest_pod_has_its_own_mqtt_client_id_and_no_env_name_twice(helm_bin, config) -> None:
    docs = render(helm_bin, *CONFIGS[config])
    for where, spec in pod_specs(docs):
        for container in spec["containers"]:
            names = [e["name"] for e in container.get("env", [])]
            assert len(names) == len(set(names)), f"{where}: an env variable is set twice: {names}"
    [ingest] = workloads(docs)["ingest"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in ingest["env"]}
    assert env["FLOWWATCH_INGEST_MQTT_CLIENT_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
