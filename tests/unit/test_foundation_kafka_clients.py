"""Every Kafka client a service builds honours the TLS/SASL settings (no client built from the bare broker list)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_service_kafka_clients_use_the_security_options() -> None:
    offenders = []
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            # The simulator's sinks take a broker list of their own (they feed any broker, not the service's).
            if re.search(r"bootstrap_servers=[\w.]*settings\.bootstrap_servers", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert offenders == [], f"use **settings.kafka_client_options(): {offenders}"
