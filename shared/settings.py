"""Settings shared by every flowwatch service, read from environment variables.

Every field is documented where it is declared; the README's settings table is
generated from the same metadata (``python -m shared.settings``), so the docs and
the code cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

ENV_PREFIX = "FLOWWATCH_"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Default web port per service, so four services can run side by side on one host.
DEFAULT_PORTS = {
    "ingest": 8081,
    "detector": 8082,
    "forecaster": 8083,
    "alerts": 8084,
    "history": 8085,
    "console": 8080,
}


def _doc(default: Any, doc: str, env: str | None = None, *, secret: bool = False) -> Any:
    """A dataclass field with its documentation attached as metadata; ``secret`` keeps it out of repr."""
    meta: dict[str, Any] = {"doc": doc, "secret": secret}
    if env:
        meta["env"] = env
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Runtime settings of one flowwatch service. Read with :meth:`from_env`."""

    service: str = _doc(
        "ingest", "Which service these settings are for (ingest, detector, forecaster, alerts, history, console)."
    )
    broker_url: str = _doc("kafka://127.0.0.1:9092", "Kafka bootstrap servers, comma separated, `kafka://host:port`.")
    redis_url: str = _doc("redis://127.0.0.1:6379/0", "Redis URL for the shared read cache.")
    mqtt_url: str = _doc("mqtt://127.0.0.1:1883", "MQTT broker URL (ingest subscribes here).")
    topic_prefix: str = _doc(
        "", "Prefix for every topic and consumer group, e.g. `prod.`; lets tests and tenants share a broker."
    )
    partitions: int = _doc(4, "Partitions of the keyed data topics; caps each service's parallelism.")
    replication_factor: int = _doc(1, "Replication factor for topics created by `python -m shared.topics create`.")
    web_host: str = _doc("127.0.0.1", "Address the service's web server binds to. Never 0.0.0.0 unless you mean it.")
    web_port: int = _doc(
        0,
        "Web server port; 0 means the service default (ingest 8081, detector 8082, forecaster 8083, alerts 8084, history 8085, console 8080).",
    )
    data_dir: Path = _doc(Path(".flowwatch"), "Directory for Faust table stores (rocksdb) and other local state.")
    model_dir: Path = _doc(Path(".flowwatch/models"), "Model registry directory.")
    log_level: str = _doc("INFO", "Log level (DEBUG, INFO, WARNING, ERROR).")
    table_store: str = _doc("rocksdb://", "Faust table store URL; `rocksdb://` (rocksdict) or `memory://`.")
    cache_ttl_s: int = _doc(3600, "TTL in seconds of entries in the Redis cache.")
    max_poll_records: int = _doc(500, "Kafka max records per poll; modest values avoid stream_wait_empty hangs.")
    standby_replicas: int = _doc(0, "Faust table standby replicas (set 1 in production for fast failover).")
    kafka_security_protocol: str = _doc(
        "PLAINTEXT", "Kafka security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str = _doc("PLAIN", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    kafka_sasl_username: str = _doc("", "SASL user name.")
    kafka_sasl_password: str = _doc("", "SASL password. A secret: set it from a Secret; never logged.", secret=True)
    kafka_ssl_cafile: str = _doc("", "CA bundle that verifies the brokers (SSL, SASL_SSL); empty: the system CAs.")
    kafka_ssl_certfile: str = _doc("", "Client certificate for mutual TLS.")
    kafka_ssl_keyfile: str = _doc("", "Client private key for mutual TLS.")
    pump_crash_guard: bool = _doc(
        True,
        "Before a batch of a readings pump, record its offsets in the progress table (one broker round trip), "
        "so a message that kills the worker outright (segfault, OOM kill) is processed alone after the restart and "
        "set aside if it kills it again, instead of being replayed into the same crash forever.",
    )
    pump_guard_ahead: int = _doc(
        1000,
        "Offsets per partition a crash guard covers beyond the batch it is written for: the batches within it "
        "start without a guard round trip of their own, and the next guard is written beside them once half of "
        "this is used. After a hard crash the guarded range (the batch and these offsets, cut at the log's end) is "
        "processed one message at a time. 0: a guard before every batch.",
    )
    pump_retry_backoff_s: float = _doc(
        1.0,
        "Pause (seconds) before a readings pump retries a batch or a message whose processing raised; a message "
        "that fails twice alone is quarantined (readings) or dead-lettered (other topics) with the error.",
    )
    api_tokens: str = _doc(
        "",
        "API tokens every service's API accepts, `role:token[:name]` entries separated by commas (roles: viewer, "
        "operator, admin). A secret: never logged.",
        secret=True,
    )
    api_tokens_file: str = _doc("", "File with API tokens, one `role token [name]` per line (`#` comments).")
    api_delegates: str = _doc(
        "",
        "Names of API tokens (comma separated) that may act for a user named in the `X-Flowwatch-User` header: the "
        "console's token, so that acks, silences and verdicts are recorded as the operator who made them.",
    )

    @property
    def port(self) -> int:
        return self.web_port or DEFAULT_PORTS.get(self.service, 8080)

    @property
    def bootstrap_servers(self) -> str:
        """Broker list as aiokafka expects it (no scheme)."""
        return ",".join(part.split("://", 1)[-1] for part in self.broker_url.split(","))

    def kafka_credentials(self) -> Any:
        """Faust ``broker_credentials`` for the configured protocol; None for PLAINTEXT."""
        import ssl

        import faust

        protocol = self.kafka_security_protocol.upper()
        if protocol not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
            raise ValueError(f"FLOWWATCH_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol!r}: unknown protocol")
        if protocol == "PLAINTEXT":
            return None
        context = None
        if protocol.endswith("SSL"):
            context = ssl.create_default_context(cafile=self.kafka_ssl_cafile or None)
            if self.kafka_ssl_certfile:
                context.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile or None)
        if protocol == "SSL":
            return faust.SSLCredentials(context)
        return faust.SASLCredentials(
            username=self.kafka_sasl_username,
            password=self.kafka_sasl_password,
            mechanism=self.kafka_sasl_mechanism,
            ssl_context=context,
        )

    def kafka_client_options(self) -> dict[str, Any]:
        """aiokafka client keyword arguments (bootstrap servers plus TLS/SASL) for admin clients and tools."""
        from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

        return {"bootstrap_servers": self.bootstrap_servers, **credentials_to_aiokafka_auth(self.kafka_credentials())}

    def topic(self, name: str) -> str:
        """Full topic name with the configured prefix."""
        return f"{self.topic_prefix}{name}"

    @property
    def table_dir(self) -> Path:
        return self.data_dir / self.service / "tables"

    @classmethod
    def from_env(cls, service: str | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``FLOWWATCH_*`` variables (or ``FLOWWATCH_*_FILE`` naming a file that holds
        the value); ``overrides`` win over the environment."""
        values = env_values(cls, ENV_PREFIX, env)
        if service:
            values["service"] = service
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The ``FLOWWATCH_*`` variables that reproduce these settings in a child process."""
        return env_of(self, ENV_PREFIX)


class ServiceSettings:
    """The knobs one service has beyond :class:`Settings`: a frozen dataclass that derives from this.

    Its variables are ``ENV_PREFIX`` + the field name (or a field's own ``env``); a field declared with
    ``_doc(secret=True)`` never shows in a repr or a log line. Cross-field checks go in :meth:`validate`.
    """

    ENV_PREFIX: ClassVar[str]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Self:
        """Settings from the environment (or ``<variable>_FILE``); ``overrides`` win over it."""
        values = env_values(cls, cls.ENV_PREFIX, env)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the variable when fields contradict each other."""

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce these settings in a child process."""
        return env_of(self, self.ENV_PREFIX)


def env_values(cls: type, prefix: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Field values of a settings dataclass found in the environment, coerced to the fields' types.

    A field is read from ``<prefix><FIELD>`` (or the name in its ``env`` metadata); when that is
    unset, from the file named by ``<variable>_FILE`` (mounted secrets), unless the dataclass has
    a field of its own for that variable. Every service's settings class uses this, so the rules
    are the same everywhere.
    """
    env = dict(os.environ if env is None else env)
    own = {f.metadata.get("env", prefix + f.name.upper()) for f in fields(cls)}
    values: dict[str, Any] = {}
    for f in fields(cls):
        key = f.metadata.get("env", prefix + f.name.upper())
        if env.get(key, "") != "":
            values[f.name] = _coerce(f, env[key], key)
        elif env.get(key + "_FILE") and key + "_FILE" not in own:
            values[f.name] = _coerce(f, Path(env[key + "_FILE"]).read_text().strip(), key)
    return values


def env_of(obj: Any, prefix: str) -> dict[str, str]:
    """The variables that reproduce a settings object in a child process."""
    return {f.metadata.get("env", prefix + f.name.upper()): str(getattr(obj, f.name)) for f in fields(obj)}


def _coerce(f: dataclasses.Field, raw: str, key: str) -> Any:
    default = f.default if f.default is not dataclasses.MISSING else None
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError as exc:
        raise ValueError(f"{key}={raw!r}: {exc}") from None
    return raw


def settings_table(cls: type = Settings, prefix: str = ENV_PREFIX) -> str:
    """Markdown table of a settings dataclass: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        key = f.metadata.get("env", prefix + f.name.upper())
        # Defaults inside the checkout are shown relative to it, so the table is the same on every machine.
        shown = str(default).replace(f"{_PROJECT_ROOT}/", "")
        rows.append(f"| `{key}` | `{shown}` | {f.metadata.get('doc', '')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
