import io

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.topics import REGISTRY, create_all


async def test_create_makes_every_topic_and_second_run_changes_nothing(settings) -> None:
    # The fixture already ran create_all once; a second run must only report.
    out = io.StringIO()
    second = await create_all(settings, out=out)
    assert set(second) == {settings.topic(s.name) for s in REGISTRY}
    assert set(second.values()) == {"exists"}, second

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics([settings.topic(s.name) for s in REGISTRY])}
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topic(s.name)) for s in REGISTRY]
        )
    finally:
        await admin.close()
    for spec in REGISTRY:
        assert len(described[settings.topic(spec.name)]["partitions"]) == spec.partitions_for(settings), spec.name
    found = {}
    for response in configs:
        for resource in response.resources:
            # resource: (error_code, error_message, type, name, [(key, value, read_only, ...)])
            found[resource[3]] = {entry[0]: entry[1] for entry in resource[4]}
    for spec in REGISTRY:
        cfg = found[settings.topic(spec.name)]
        assert cfg["cleanup.policy"] == spec.cleanup_policy
        assert cfg["retention.ms"] == str(spec.retention_ms)
