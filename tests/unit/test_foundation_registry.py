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


def saved(tmp_path, payload: bytes = b"weights"):
    reg = ModelRegistry(tmp_path)
    with reg.create("detector-pump") as d:
        (d / "model.joblib").write_bytes(payload)
        (d / "sub").mkdir()
        (d / "sub" / "extra.bin").write_bytes(b"x")
    return reg, reg.last_created


@pytest.mark.parametrize(
    "version", ["../../etc", "v1/../v1", "/abs", "v1/x", "..", ".hidden", "", "v" * 65, "v1\n", "v1 ", 7, None]
)
def test_versions_names_and_aliases_must_be_plain_names(tmp_path, version) -> None:
    reg, _ = saved(tmp_path)
    with pytest.raises(RegistryError, match="not a plain name"):
        reg.load("detector-pump", version=version if version is not None else "")  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="not a plain name"):
        reg.load(version if isinstance(version, str) else "", version="v1")
    if isinstance(version, str):
        with pytest.raises(RegistryError, match="not a plain name"):
            reg.promote("detector-pump", "v1", alias=version)


def test_a_version_records_the_sha256_of_its_files_and_loads_only_if_they_match(tmp_path) -> None:
    reg, mv = saved(tmp_path)
    assert sorted(mv.metadata["sha256"]) == ["model.joblib", "sub/extra.bin"]
    assert reg.load("detector-pump", "v1").metadata["sha256"] == mv.metadata["sha256"]

    (mv.path / "model.joblib").write_bytes(b"import os; os.system('evil')")
    with pytest.raises(RegistryError, match=r"differ from the sha256 recorded at save time: model\.joblib"):
        reg.load("detector-pump", "v1")
    with pytest.raises(RegistryError):
        reg.promote("detector-pump", "v1")
    (mv.path / "model.joblib").write_bytes(b"weights")
    (mv.path / "planted.pkl").write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"planted\.pkl"):
        reg.load("detector-pump", "v1")
    (mv.path / "planted.pkl").unlink()
    (mv.path / "sub" / "extra.bin").unlink()
    with pytest.raises(RegistryError, match=r"sub/extra\.bin"):
        reg.load("detector-pump", "v1")
    assert [m.version for m in reg.list("detector-pump")] == ["v1"]  # listing reads metadata only


def test_a_version_without_digests_is_refused_until_sealed(tmp_path) -> None:
    import orjson

    reg, mv = saved(tmp_path)
    meta = orjson.loads((mv.path / "meta.json").read_bytes())
    del meta["sha256"]
    (mv.path / "meta.json").write_bytes(orjson.dumps(meta))
    with pytest.raises(RegistryError, match=r"no sha256 digests.*seal detector-pump v1"):
        reg.load("detector-pump", "v1")
    reg.seal("detector-pump", "v1")
    assert reg.load("detector-pump", "v1").metadata["sha256"] == mv.metadata["sha256"]


def test_models_events_with_wrong_types_or_path_versions_are_refused() -> None:
    from shared.records import ModelEvent
    from shared.registry import check_event

    ok = ModelEvent(name="detector-pump", version="v3", alias="production", action="promoted", ts=1)
    assert check_event(ok) == ""
    for bad in (
        {"version": "../../tmp/x"},
        {"version": 3},
        {"name": ["x"]},
        {"alias": None},
        {"action": "a" * 100},
        {"ts": "now"},
    ):
        event = ModelEvent(**{**ok.to_dict(), **bad})
        assert check_event(event) != ""
