import pytest

from shared.registry import ModelRegistry, RegistryError


def test_versions_aliases_and_promotion(tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    with reg.create("detector-pump", {"params": {"k": 3}, "metrics": {"f1": 0.8}}) as d:
        (d / "model.bin").write_bytes(b"one")
    with reg.create("detector-pump", {"params": {"k": 4}}) as d:
        (d / "model.bin").write_bytes(b"two")
    assert [m.version for m in reg.list("detector-pump")] == ["v1", "v2"]
    assert reg.load("detector-pump").version == "v2"
    with pytest.raises(RegistryError, match="alias 'production'"):
        reg.load("detector-pump", alias="production")
    event = reg.promote("detector-pump", "v1")
    assert (event.name, event.version, event.alias, event.action) == ("detector-pump", "v1", "production", "promoted")
    prod = reg.load("detector-pump", alias="production")
    assert (prod.path / "model.bin").read_bytes() == b"one"
    assert prod.metadata["metrics"] == {"f1": 0.8}
    assert prod.metadata["created"] > 0


def test_failed_write_leaves_no_version(tmp_path) -> None:
    reg = ModelRegistry(tmp_path)
    with pytest.raises(RuntimeError), reg.create("m") as d:
        (d / "half").write_text("x")
        raise RuntimeError("training crashed")
    assert reg.list("m") == []
    assert [p.name for p in (tmp_path / "m").iterdir()] == []


def test_promoting_a_missing_version_fails(tmp_path) -> None:
    with pytest.raises(RegistryError):
        ModelRegistry(tmp_path).promote("nothing", "v9")
