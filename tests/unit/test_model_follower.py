"""The shared model follower on a real registry directory: what triggers a swap, how a bad model is refused,
what readiness and the metrics say."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import REGISTRY

from shared.model_follower import FollowerMetrics, ModelFollower
from shared.records import ModelEvent
from shared.registry import ModelRegistry, ModelVersion

METRICS = FollowerMetrics.for_service("followertest")


def save(registry: ModelRegistry, name: str, text: str) -> str:
    with registry.create(name) as d:
        (d / "model.txt").write_text(text)
    return registry.last_created.version


def read_model(slot: str, mv: ModelVersion) -> str:
    text = (mv.path / "model.txt").read_text()
    if text == "refuse me":
        raise ValueError("trained with another step")
    return text


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(f"flowwatch_followertest_{name}", labels or {}) or 0.0


def follower(root: Path, **kw) -> ModelFollower[str]:
    names = kw.pop("names", {"pump": "m-pump", "pipe": "m-pipe"})
    return ModelFollower("followertest", ModelRegistry(root), names, "production", read_model, METRICS, **kw)


def test_a_slot_serves_what_its_alias_points_at_and_swaps_when_the_alias_moves(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    swaps: list[tuple[str, str]] = []
    f = follower(tmp_path, on_swap=lambda slot, served, mv: swaps.append((slot, served.model)))
    v1 = save(registry, "m-pump", "one")
    save(registry, "m-pump", "two, not promoted")
    assert f.refresh_now("start") == []  # no alias, nothing followed
    registry.promote("m-pump", v1)
    loads = sample("model_loads_total")
    assert f.refresh_now("poll") == [f"pump={v1}"]
    assert f.refresh_now("poll") == []  # already serving it: not loaded again
    assert f.model("pump") == "one" and f.versions() == {"pump": v1} and f.model("pipe") is None
    v3 = save(registry, "m-pump", "three")
    registry.promote("m-pump", v3)
    assert f.refresh_now("poll") == [f"pump={v3}"]
    assert swaps == [("pump", "one"), ("pump", "three")]
    assert sample("model_loads_total") == loads + 2
    assert sample("model_loaded", {"model": "m-pump", "version": v1}) == 0
    assert sample("model_loaded", {"model": "m-pump", "version": v3}) == 1


def test_a_model_that_cannot_be_loaded_is_refused_and_the_current_one_keeps_serving(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    f = follower(tmp_path, fallback="statistical only")
    registry.promote("m-pump", save(registry, "m-pump", "good"))
    f.refresh_now("start")
    errors = sample("model_load_errors_total")
    refused = save(registry, "m-pump", "refuse me")  # the service's own check says no
    registry.promote("m-pump", refused)
    assert f.refresh_now("poll") == []
    assert f.model("pump") == "good" and f.version("pump") == "v1"
    ok, detail = f.readiness()
    assert ok and "pump: v1" in detail and f"load errors: m-pump {refused}: ValueError" in detail
    assert "statistical only for: pipe" in detail
    tampered = save(registry, "m-pump", "fine")
    registry.promote("m-pump", tampered)
    (tmp_path / "m-pump" / tampered / "model.txt").write_text("changed after it was sealed")
    assert f.refresh_now("poll") == []  # the registry refuses files that do not match their digests
    assert f.model("pump") == "good" and tampered in f.errors["pump"]
    assert sample("model_load_errors_total") == errors + 2
    registry.promote("m-pump", "v1")  # back to the version serving: the failure is no longer wanted
    assert f.refresh_now("poll") == [] and "load errors" not in f.readiness()[1]
    good = save(registry, "m-pump", "better")
    registry.promote("m-pump", good)
    assert f.refresh_now("poll") == [f"pump={good}"]
    assert "load errors" not in f.readiness()[1]


def test_a_required_model_makes_readiness_say_why_until_it_is_loaded(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    f = follower(tmp_path, names={"fc": "fc"}, required=True, newest_without_alias=True, missing_hint="train one")
    assert f.readiness() == (False, "model not loaded yet")
    f.refresh_now("start")
    ok, detail = f.readiness()
    assert not ok and detail == f"no model 'fc' in {tmp_path}; train one"
    save(registry, "fc", "refuse me")
    f.refresh_now("poll")
    ok, detail = f.readiness()
    assert not ok and "fc v1: ValueError: trained with another step" in detail
    save(registry, "fc", "newest")  # no alias yet: the newest version serves
    f.refresh_now("poll")
    assert f.readiness() == (True, "fc:v2")


def test_events_wake_the_slots_they_name_and_the_registry_decides_the_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    f = follower(tmp_path)
    v1 = save(registry, "m-pipe", "one")
    v2 = save(registry, "m-pipe", "two")
    registry.promote("m-pipe", v1)
    event = registry.promote("m-pipe", v2)

    async def run() -> None:
        other_alias = ModelEvent(name="m-pipe", version=v2, alias="staging", action="promoted", ts=1)
        assert await f.on_event(other_alias) == []
        assert not f.serving
        assert await f.on_event(event) == [f"pipe={v2}"]
        assert f.first_attempt.is_set()
        stale = ModelEvent(name="m-pipe", version=v1, alias="production", action="promoted", ts=0)
        assert await f.on_event(stale) == []  # replayed: the alias still points at v2
        assert f.version("pipe") == v2

    asyncio.run(run())
