"""Model profiles: which readings share a model, and what that model looks at (profiles.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.detector.model import ModelConfig
from shared.records import Reading

#: Streaming models serve many sensors at once, so they see unit-free features only.
STREAMING_MODEL = {"blocks": ["z_tod", "spread_rel", "delta_z"]}
MATCH_KEYS = ("asset", "utility", "site", "zone", "sensor_prefix")


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class Profile:
    name: str
    match: dict[str, str] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    model: dict[str, Any] = field(default_factory=dict)

    def matches(self, r: Reading) -> bool:
        for key, want in self.match.items():
            if key == "sensor_prefix":
                if not r.sensor_id.startswith(want):
                    return False
            elif getattr(r, key) != want:
                return False
        return True

    def model_config(self, zscore_threshold: float = 2.5) -> ModelConfig:
        merged = {**STREAMING_MODEL, "zscore_threshold": zscore_threshold, **self.model}
        return ModelConfig.from_dict(merged)


class ProfileSet:
    """Ordered profiles; the first whose match holds wins. Remembers each sensor's profile."""

    def __init__(self, profiles: list[Profile], max_cached: int = 200_000):
        if not profiles:
            raise ProfileError("no profiles configured")
        if profiles[-1].match:
            profiles = [*profiles, Profile("default")]  # every reading gets a profile
        self.profiles = profiles
        self.by_name = {p.name: p for p in profiles}
        self._cache: dict[str, Profile] = {}
        self._max_cached = max_cached

    def for_reading(self, r: Reading) -> Profile:
        p = self._cache.get(r.sensor_id)
        if p is None:
            p = next(p for p in self.profiles if p.matches(r))
            if len(self._cache) >= self._max_cached:
                self._cache.clear()
            self._cache[r.sensor_id] = p
        return p

    @classmethod
    def load(cls, path: Path | str) -> ProfileSet:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ProfileError(f"{path}: {exc}") from None
        out = []
        for i, item in enumerate(doc.get("profiles") or []):
            if not isinstance(item, dict) or not item.get("name"):
                raise ProfileError(f"{path}: profile #{i + 1} needs a name")
            match = {str(k): str(v) for k, v in (item.get("match") or {}).items()}
            unknown = set(match) - set(MATCH_KEYS)
            if unknown:
                raise ProfileError(f"{path}: profile {item['name']!r} matches on unknown keys {sorted(unknown)}")
            profile = Profile(str(item["name"]), match, tuple(item.get("metrics") or ()), dict(item.get("model") or {}))
            try:
                profile.model_config()
            except TypeError as exc:
                raise ProfileError(f"{path}: profile {profile.name!r}: bad model settings: {exc}") from None
            out.append(profile)
        return cls(out)
