"""Alert identity: the fingerprint of a label set, and the key of a notification group."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from shared.codec import dumps


def fingerprint(labels: Mapping[str, str]) -> str:
    """16 hex chars identifying a label set; independent of label order, like Alertmanager's."""
    canonical = dumps(sorted((k, v) for k, v in labels.items() if v != ""))
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def group_labels(labels: Mapping[str, str], group_by: tuple[str, ...]) -> dict[str, str]:
    """The labels an alert is grouped by; ``("...",)`` groups by all labels."""
    if group_by == ("...",):
        return dict(labels)
    return {k: labels[k] for k in group_by if labels.get(k, "") != ""}


def group_key(route_path: str, glabels: Mapping[str, str]) -> str:
    """Alertmanager-style group key: ``<route path>:{a="1", b="2"}``."""
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(glabels.items()))
    return f"{route_path}:{{{inner}}}"


def shard_key(labels: Mapping[str, str], shard_by: Iterable[str]) -> bytes:
    """Kafka key that puts every alert of one shard (e.g. one site/zone) on one partition."""
    return "/".join(labels.get(k, "") for k in shard_by).encode()


def shard_partition(labels: Mapping[str, str], shard_by: Iterable[str], partitions: int) -> int:
    """The internal-topic partition of a shard; every event about the shard's alerts is sent there."""
    digest = hashlib.blake2b(shard_key(labels, shard_by), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions
