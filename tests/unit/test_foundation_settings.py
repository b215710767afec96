from pathlib import Path

import pytest

from shared.settings import Settings, settings_table


def test_defaults_bind_loopback_and_use_service_port() -> None:
    s = Settings.from_env("detector", env={})
    assert s.web_host == "127.0.0.1"
    assert s.port == 8082
    assert Settings.from_env("alerts", env={}).port == 8084


def test_environment_is_read_and_coerced() -> None:
    env = {
        "FLOWWATCH_BROKER_URL": "kafka://10.0.0.1:9093,kafka://10.0.0.2:9093",
        "FLOWWATCH_PARTITIONS": "12",
        "FLOWWATCH_DATA_DIR": "/var/lib/fw",
        "FLOWWATCH_TOPIC_PREFIX": "prod.",
    }
    s = Settings.from_env("ingest", env=env)
    assert s.partitions == 12
    assert s.data_dir == Path("/var/lib/fw")
    assert s.bootstrap_servers == "10.0.0.1:9093,10.0.0.2:9093"
    assert s.topic("readings.raw") == "prod.readings.raw"
    assert s.table_dir == Path("/var/lib/fw/ingest/tables")


def test_bad_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="FLOWWATCH_PARTITIONS"):
        Settings.from_env(env={"FLOWWATCH_PARTITIONS": "many"})


def test_to_env_round_trips() -> None:
    s = Settings.from_env("forecaster", env={"FLOWWATCH_WEB_PORT": "9999", "FLOWWATCH_LOG_LEVEL": "DEBUG"})
    assert Settings.from_env(env=s.to_env()) == s


def test_settings_table_documents_every_field() -> None:
    table = settings_table()
    for name in ("FLOWWATCH_BROKER_URL", "FLOWWATCH_REDIS_URL", "FLOWWATCH_MQTT_URL", "FLOWWATCH_MODEL_DIR"):
        assert f"`{name}`" in table
    assert all(row.count("|") == 4 for row in table.splitlines())


def test_secret_from_file_and_kept_out_of_repr(tmp_path) -> None:
    secret = tmp_path / "sasl"
    secret.write_text("s3cr3t\n")
    s = Settings.from_env(
        env={"FLOWWATCH_KAFKA_SASL_PASSWORD_FILE": str(secret), "FLOWWATCH_KAFKA_SASL_USERNAME": "fw"}
    )
    assert s.kafka_sasl_password == "s3cr3t"
    assert "s3cr3t" not in repr(s)


def test_kafka_security_settings_become_client_options() -> None:
    plain = Settings.from_env(env={})
    assert plain.kafka_credentials() is None
    assert plain.kafka_client_options() == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    sasl = Settings.from_env(
        env={
            "FLOWWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "FLOWWATCH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "FLOWWATCH_KAFKA_SASL_USERNAME": "fw",
            "FLOWWATCH_KAFKA_SASL_PASSWORD": "pw",
        }
    )
    opts = sasl.kafka_client_options()
    assert opts["security_protocol"] == "SASL_PLAINTEXT"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "fw" and opts["sasl_plain_password"] == "pw"
    with pytest.raises(ValueError, match="unknown protocol"):
        Settings.from_env(env={"FLOWWATCH_KAFKA_SECURITY_PROTOCOL": "TLS"}).kafka_credentials()
