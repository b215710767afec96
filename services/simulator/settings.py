"""Settings of the simulator, from ``FLOWWATCH_SIMULATOR_*`` environment variables (CLI flags win).

The broker, MQTT URL and topic prefix come from the shared :class:`shared.settings.Settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shared.settings import ServiceSettings, _doc

ENV_PREFIX = "FLOWWATCH_SIMULATOR_"


@dataclass(frozen=True)
class SimulatorSettings(ServiceSettings):
    """Defaults of ``python -m services.simulator``; every one can also be given as a flag."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX

    seed: int = _doc(7, "Seed of everything random: the same seed gives the same readings, faults and incidents.")
    network: str = _doc("", "Network description (YAML or JSON); empty means the default network.")
    scale: int = _doc(1, "Copies of the default network's four sites (ignored with a network file).")
    rate: float = _doc(0.0, "Target readings/s of `run`; 0 means the network's natural rate (~20/s by default).")
    faults: str = _doc(
        "realistic", "Field faults of `run`: a preset (clean, realistic, harsh, stress) or `noise=0.1,...`."
    )
    anomaly_fraction: float = _doc(0.05, "Fraction of readings that belong to an incident.")
    incident_scale: float = _doc(
        0.05, "Incident durations multiplier for `run` (0.05: a 10 h leak lasts 30 min, so a demo shows incidents)."
    )
    ingest_url: str = _doc("http://127.0.0.1:8081/v1/readings", "Ingest endpoint for `--sink http`.")
    ingest_token: str = _doc(
        "", "Bearer token for the ingest endpoint (never logged).", env="FLOWWATCH_INGEST_TOKEN", secret=True
    )
    http_batch: int = _doc(500, "Readings per HTTP request.")
    http_format: str = _doc("ndjson", "HTTP body: `ndjson` (one reading per line) or `json` (a JSON array).")
    http_concurrency: int = _doc(4, "HTTP requests in flight at once.")
    mqtt_topic: str = _doc("flowwatch/readings", "MQTT topic root; readings go to `<root>/<site>/<sensor_id>`.")
    mqtt_qos: int = _doc(1, "MQTT QoS of published readings (0 or 1).")
    kafka_linger_ms: int = _doc(20, "Producer linger: how long a batch waits to fill up.")
    kafka_batch_bytes: int = _doc(1_048_576, "Maximum bytes of one producer batch per partition.")
    tick_ms: int = _doc(100, "Pacing granularity of real-time runs: readings due within a tick go out together.")

    # Flags left unset (None) keep the environment's value.
    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> SimulatorSettings:
        return super().from_env(env, **{k: v for k, v in overrides.items() if v is not None})

    def replace(self, **changes: Any) -> SimulatorSettings:
        return super().replace(**{k: v for k, v in changes.items() if v is not None})


if __name__ == "__main__":
    from shared.settings import settings_table

    print(settings_table(SimulatorSettings, ENV_PREFIX))
