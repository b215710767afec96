"""Demand profiles: how much a zone consumes at a given local time, relative to its mean.

A profile is a 24-hour curve for weekdays and one for weekends, smoothed into a few
Fourier harmonics so it is cheap to evaluate on millions of timestamps and has a
closed-form integral (a reservoir's level is the integral of demand minus supply).
On top: a seasonal term (gas heating peaks in winter) and a slow "weather" term of
incommensurate periods, so no two weeks look exactly alike. Everything is a pure
function of time, which is what makes the simulator deterministic however the
timeline is cut into blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
_HARMONICS = 5
_OMEGA = 2 * np.pi / 24.0  # per hour
#: Periods (days) of the slow weather term; incommensurate so the pattern never repeats.
_WEATHER_PERIODS_D = np.array([3.1, 5.7, 11.3])


@dataclass(frozen=True)
class Profile:
    """A demand profile; ``weekday``/``weekend`` are 24 hourly values (any scale; normalised to mean 1)."""

    name: str
    weekday: tuple[float, ...]
    weekend: tuple[float, ...]
    weather: float  # amplitude of the slow weather term
    season: float  # amplitude of the yearly term
    season_peak_doy: int  # day of year of the seasonal peak


def _curve(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split())
    assert len(values) == 24, "a daily curve has 24 hourly values"
    return values


PROFILES: dict[str, Profile] = {
    # Household water: a morning and an evening peak, a deep night minimum (night flow is low).
    "residential": Profile(
        "residential",
        weekday=_curve(
            "0.55 0.45 0.40 0.38 0.40 0.55 0.95 1.45 1.50 1.30 1.15 1.10 1.10 1.05 1.00 0.98 1.05 1.20 1.40 1.45 1.30 1.05 0.85 0.68"
        ),
        weekend=_curve(
            "0.60 0.50 0.44 0.40 0.40 0.45 0.60 0.85 1.15 1.40 1.45 1.35 1.25 1.15 1.05 1.00 1.05 1.15 1.30 1.35 1.25 1.05 0.88 0.72"
        ),
        weather=0.04,
        season=0.08,
        season_peak_doy=200,
    ),
    # Offices and commercial buildings: working hours on weekdays, a low base load otherwise.
    "office": Profile(
        "office",
        weekday=_curve(
            "0.35 0.35 0.35 0.35 0.35 0.38 0.50 0.90 1.35 1.50 1.55 1.55 1.45 1.50 1.55 1.50 1.40 1.20 0.85 0.60 0.48 0.42 0.38 0.36"
        ),
        weekend=_curve(
            "0.36 0.35 0.35 0.35 0.35 0.35 0.36 0.38 0.42 0.45 0.46 0.46 0.46 0.45 0.45 0.44 0.43 0.42 0.41 0.40 0.39 0.38 0.37 0.36"
        ),
        weather=0.03,
        season=0.10,
        season_peak_doy=20,
    ),
    # Gas for heating: early-morning and evening peaks, strongly seasonal and weather driven.
    "heating": Profile(
        "heating",
        weekday=_curve(
            "0.80 0.75 0.75 0.80 0.95 1.25 1.45 1.35 1.15 1.00 0.95 0.90 0.90 0.90 0.95 1.00 1.10 1.25 1.30 1.20 1.10 1.00 0.90 0.85"
        ),
        weekend=_curve(
            "0.82 0.78 0.76 0.78 0.85 1.00 1.20 1.35 1.30 1.15 1.05 1.00 0.95 0.95 1.00 1.05 1.12 1.25 1.30 1.22 1.12 1.02 0.92 0.86"
        ),
        weather=0.12,
        season=0.35,
        season_peak_doy=15,
    ),
    # Industrial users: two shifts, flat weekends.
    "industrial": Profile(
        "industrial",
        weekday=_curve(
            "0.60 0.60 0.60 0.60 0.62 0.80 1.20 1.30 1.30 1.30 1.30 1.25 1.20 1.30 1.30 1.30 1.25 1.15 1.00 0.90 0.80 0.70 0.65 0.62"
        ),
        weekend=_curve(
            "0.65 0.65 0.65 0.65 0.65 0.66 0.70 0.72 0.74 0.75 0.75 0.75 0.75 0.75 0.74 0.73 0.72 0.71 0.70 0.69 0.68 0.67 0.66 0.65"
        ),
        weather=0.02,
        season=0.03,
        season_peak_doy=200,
    ),
}
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)
PROFILE_INDEX: dict[str, int] = {name: i for i, name in enumerate(PROFILE_NAMES)}


def _harmonics(values: tuple[float, ...]) -> np.ndarray:
    """(a_k, b_k) for k=1..K of a 24-point curve normalised to mean 1; shape (2, K)."""
    v = np.asarray(values, dtype=float)
    v = v / v.mean()
    hours = np.arange(24)
    k = np.arange(1, _HARMONICS + 1)[:, None]
    a = 2 / 24 * (v * np.cos(k * _OMEGA * hours)).sum(axis=1)
    b = 2 / 24 * (v * np.sin(k * _OMEGA * hours)).sum(axis=1)
    return np.stack([a, b])


#: Coefficients per profile: [profile, weekday|weekend, a|b, k].
_COEF = np.stack([np.stack([_harmonics(p.weekday), _harmonics(p.weekend)]) for p in PROFILES.values()])
_WEATHER = np.array([p.weather for p in PROFILES.values()])
_SEASON = np.array([p.season for p in PROFILES.values()])
_SEASON_PEAK = np.array([p.season_peak_doy for p in PROFILES.values()], dtype=float)


def _integral_norm() -> np.ndarray:
    h = np.linspace(0, 24, 24 * 12, endpoint=False)
    out = []
    for p in range(len(PROFILES)):
        curve = _integral_curve(h[:, None], np.array([p]))
        out.append(max(float(np.abs(curve).max()), 1e-9))
    return np.array(out)


def _integral_curve(hours: np.ndarray, profile: np.ndarray) -> np.ndarray:
    a = _COEF[profile, 0, 0]  # [S, K] weekday
    b = _COEF[profile, 0, 1]
    k = np.arange(1, _HARMONICS + 1)
    arg = hours[..., None] * k * _OMEGA
    return ((a * np.sin(arg) - b * np.cos(arg)) / (k * _OMEGA)).sum(axis=-1)


_INTEGRAL_NORM = _integral_norm()


@dataclass(frozen=True)
class ZoneDemand:
    """Per-column (sensor) demand parameters, gathered from each sensor's zone and site."""

    profile: np.ndarray  # int, index into PROFILE_NAMES
    offset_ms: np.ndarray  # int64, site UTC offset + zone phase shift
    scale: np.ndarray  # zone demand multiplier
    weather_phase: np.ndarray  # [S, 3] radians
    # a regime shift (``SimConfig.regime_shift_ms``): from this time on every zone's demand is multiplied by
    # ``shift_factor`` — a new normal, not an incident: no label, no end
    shift_ms: int | None = None
    shift_factor: float = 1.0

    def take(self, idx: np.ndarray) -> ZoneDemand:
        return ZoneDemand(
            self.profile[idx],
            self.offset_ms[idx],
            self.scale[idx],
            self.weather_phase[idx],
            self.shift_ms,
            self.shift_factor,
        )

    def local_hours(self, t_ms: np.ndarray) -> np.ndarray:
        return ((t_ms + self.offset_ms) % DAY_MS) / HOUR_MS

    def __call__(self, t_ms: np.ndarray) -> np.ndarray:
        """Demand (mean ~1 x zone scale) at ``t_ms`` of shape [T, S] (or [S])."""
        local = t_ms + self.offset_ms
        hours = (local % DAY_MS) / HOUR_MS
        weekend = ((local // DAY_MS + 3) % 7) >= 5  # 1970-01-01 was a Thursday; Monday is 0
        coef = _COEF[self.profile]  # [S, 2, 2, K]
        theta = hours * _OMEGA
        c1, s1 = np.cos(theta), np.sin(theta)
        ck, sk = c1, s1
        wd = np.ones_like(theta)
        we = np.ones_like(theta)
        for k in range(_HARMONICS):
            # cos/sin of k*theta by the angle-addition recurrence: two trig calls instead of ten.
            if k:
                ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
            wd += coef[:, 0, 0, k] * ck + coef[:, 0, 1, k] * sk
            we += coef[:, 1, 0, k] * ck + coef[:, 1, 1, k] * sk
        daily = np.where(weekend, we, wd)
        days = t_ms / DAY_MS
        doy = days % 365.25
        season = 1 + _SEASON[self.profile] * np.cos(2 * np.pi * (doy - _SEASON_PEAK[self.profile]) / 365.25)
        waves = np.sin(2 * np.pi * days[..., None] / _WEATHER_PERIODS_D + self.weather_phase).sum(axis=-1) / 3
        weather = 1 + _WEATHER[self.profile] * waves
        out = np.clip(daily, 0.05, None) * season * weather * self.scale
        if self.shift_ms is not None:
            out = out * np.where(t_ms >= self.shift_ms, self.shift_factor, 1.0)
        return out

    def integral(self, t_ms: np.ndarray) -> np.ndarray:
        """Normalised running integral of the weekday curve minus its mean, in [-1, 1]: drains by day."""
        hours = self.local_hours(t_ms)
        return _integral_curve(hours, self.profile) / _INTEGRAL_NORM[self.profile]
