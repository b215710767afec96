"""Liveness and readiness of the shared service base, without a broker."""

from shared.service import base_app
from shared.settings import Settings


def _state(tmp_path):
    settings = Settings.from_env("detector", env={}, data_dir=tmp_path, table_store="memory://")
    _app, state = base_app(settings, app_id=f"health-test-{tmp_path.name}")
    return state


def test_liveness_check_failure_fails_health(tmp_path) -> None:
    state = _state(tmp_path)
    assert state.liveness()[0] is True
    state.add_liveness_check("pump", lambda: (False, "120s without a batch"))
    alive, detail = state.liveness()
    assert alive is False
    assert detail["pump"] == {"ok": False, "detail": "120s without a batch"}


def test_readiness_needs_the_group_and_every_check(tmp_path) -> None:
    state = _state(tmp_path)
    ready, detail = state.readiness()
    assert ready is False and detail["joined_group"] is False
    state.joined = True
    assert state.readiness()[0] is True
    state.add_check("model", lambda: (False, "no model yet"))
    ready, detail = state.readiness()
    assert ready is False and detail["model"] == {"ok": False, "detail": "no model yet"}

    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    state.add_check("model", broken)
    ready, detail = state.readiness()
    assert ready is False and "RuntimeError: boom" in detail["model"]["detail"]


def test_an_assignment_that_leaves_partitions_to_no_worker_is_incomplete() -> None:
    from shared.service import uncovered_partitions

    # Two workers between them read both partitions of each topic: complete, whoever reads what.
    both = [{"in": [0], "app-t-changelog": [1]}, {"in": [1], "app-t-changelog": [0]}]
    assert uncovered_partitions({"in": 2, "app-t-changelog": 2}, both) == {}
    # A lone worker that joined before its topics were in the metadata: assigned nothing.
    assert uncovered_partitions({"in": 2, "app-t-changelog": 2}, [{}]) == {
        "app-t-changelog": "partitions [0, 1] assigned to no worker",
        "in": "partitions [0, 1] assigned to no worker",
    }
    assert uncovered_partitions({"in": 3}, [{"in": [0, 2]}]) == {"in": "partitions [1] assigned to no worker"}
    missing = "not in this worker's metadata yet (no such topic?)"
    assert uncovered_partitions({"new": None, "gone": 0}, [{}]) == {"new": missing, "gone": missing}
