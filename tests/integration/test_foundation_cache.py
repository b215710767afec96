import uuid

from shared.cache import Cache
from shared.metrics import CACHE_ERRORS


async def test_cache_round_trip_on_real_redis(stack) -> None:
    cache = Cache(stack.redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:", ttl_s=60, service="test")
    try:
        assert await cache.ping()
        assert await cache.set_many("sensor", {"s-1": {"score": 1.5}, "s-2": {"score": 0.2}})
        assert await cache.get("sensor", "s-1") == {"score": 1.5}
        assert await cache.get_many("sensor", ["s-1", "s-2", "nope"]) == {"s-1": {"score": 1.5}, "s-2": {"score": 0.2}}
        assert await cache.incr_many("zone_anomalies", {"z1": 3})
        assert await cache.incr_many("zone_anomalies", {"z1": 2})
        assert int(await cache.client.get(cache.key("zone_anomalies", "z1"))) == 5
        assert 0 < await cache.client.ttl(cache.key("sensor", "s-1")) <= 60
        assert cache.misses == 0
    finally:
        await cache.client.delete(*await cache.client.keys(cache.prefix + "*"))
        await cache.close()


async def test_redis_down_degrades_to_counted_misses() -> None:
    # Nothing listens on port 1 of loopback: every call fails fast, none raises.
    cache = Cache("redis://127.0.0.1:1/0", service="test-down", log_every_s=3600)
    before = CACHE_ERRORS.labels("test-down", "set")._value.get()
    assert await cache.set("sensor", "s-1", {"x": 1}) is False
    assert await cache.get("sensor", "s-1") is None
    assert await cache.incr_many("zone", {"z": 1}) is False
    assert cache.misses == 3
    assert CACHE_ERRORS.labels("test-down", "set")._value.get() == before + 1
    await cache.close()


async def test_set_many_writes_every_entry_with_its_ttl(stack) -> None:
    # set_many is one script call per batch: every key written, each with the TTL asked for.
    cache = Cache(stack.redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:", ttl_s=60, service="test")
    entries = {f"s-{i}": {"i": i, "name": f"sensor {i}", "values": {"p": i / 7}} for i in range(600)}
    try:
        assert await cache.set_many("sensor", entries)
        assert await cache.set_many("alert", {"a-1": [1, 2]}, ttl_s=7)
        assert await cache.get_many("sensor", list(entries)) == entries
        ttls = [await cache.client.ttl(cache.key("sensor", ident)) for ident in ("s-0", "s-299", "s-599")]
        assert all(0 < t <= 60 for t in ttls)
        assert await cache.get("alert", "a-1") == [1, 2]
        assert 0 < await cache.client.ttl(cache.key("alert", "a-1")) <= 7
        assert cache.misses == 0
    finally:
        await cache.client.delete(*await cache.client.keys(cache.prefix + "*"))
        await cache.close()


async def test_a_server_that_refuses_the_script_gets_the_same_writes_by_pipeline(stack) -> None:
    cache = Cache(stack.redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:", ttl_s=60, service="test")
    # A script the server refuses (an unknown command inside it), as one whose ACL forbids scripting would.
    cache._set_script = cache.client.register_script("return redis.call('NO-SUCH-COMMAND')")
    try:
        assert await cache.set_many("sensor", {"s-1": {"score": 1.5}, "s-2": [1, 2]})
        assert cache._set_script is None  # pipelines from now on
        assert await cache.set_many("sensor", {"s-3": "x"}, ttl_s=9)
        assert await cache.get_many("sensor", ["s-1", "s-2", "s-3"]) == {
            "s-1": {"score": 1.5},
            "s-2": [1, 2],
            "s-3": "x",
        }
        assert 0 < await cache.client.ttl(cache.key("sensor", "s-1")) <= 60
        assert 0 < await cache.client.ttl(cache.key("sensor", "s-3")) <= 9
        assert cache.misses == 0
    finally:
        await cache.client.delete(*await cache.client.keys(cache.prefix + "*"))
        await cache.close()
