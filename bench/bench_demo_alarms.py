"""What an operator on call sees in `make demo`: flags, false alarms and alerts of the demo's first minutes.

    PYTHONPATH=. python bench/bench_demo_alarms.py [--minutes 30] [--rate 200] [--seed 7] [--start ...]
        [--label NAME] [--out bench/results/demo_alarms.json]

The demo's data path without Kafka, in delivery order: the simulator with the demo's settings
(``run --rate 200``: the default network, the ``realistic`` field faults, the simulator's default
incident fraction and incident scale) encodes every message as a device sends it; ingest's
:class:`~services.ingest.pipeline.BatchProcessor` decides it (clean or quarantined); the clean readings go
through the detector's :class:`~services.detector.pipeline.Scorer` in micro-batches with the profiles the
worker loads (services/detector/profiles.yaml) and the worker's default settings, from empty state (the
statistical mode: the demo ships no trained detector model; its first retrain comes after 15 minutes).

Reported per profile and pooled: flagged rate, flagged rate on readings of no incident, per reading
precision and recall against the simulator's labels (``Batch.incident``: the readings the simulator
labels on the ``labels`` topic), the share of incidents detected — also *beyond chance*: more of the
incident's readings flagged than the profile's false flag rate explains (binomial tail < 1 %), since a
detector that flags 5 % of everything "detects" any long incident by accident — and false alarm *episodes* per
sensor-hour (a run of flagged readings of one sensor outside every incident). Alerts are estimated with
the alerts service's own config (services/alerts/config/alerts.yaml, rule ``SensorAnomaly``): an alert per
fingerprint (its labels: site, zone, utility, sensor, severity) that fires on the first anomaly and
resolves after ``resolve_after`` without one (a later anomaly is a new alert), and the notifications of
the route's aggregation groups (``group_by``, ``group_wait``, ``group_interval``). Per 10 minutes, split
into 10-minute windows with and without a labelled incident.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW_MS = 600_000


def simulate(minutes: float, rate: float, seed: int, start: str) -> tuple[list[Any], dict, dict, Any]:
    """Clean readings of the demo's simulator after ingest, their truth, and the network."""
    from services.ingest.pipeline import BatchProcessor, Inbound
    from services.ingest.rules import Rules
    from services.ingest.settings import IngestSettings
    from services.simulator import Network, Simulator
    from services.simulator.encode import Encoder
    from services.simulator.faults import FaultConfig
    from services.simulator.generator import SimConfig
    from services.simulator.settings import SimulatorSettings
    from shared.batching import PartitionMap
    from shared.timeutil import parse_time_ms

    d = SimulatorSettings()
    net = Network.default(seed=seed)
    config = SimConfig(
        anomaly_fraction=d.anomaly_fraction,
        incident_scale=d.incident_scale,
        faults=FaultConfig.parse(d.faults),
        interval_scale=net.natural_rate() / rate,
    )
    sim = Simulator(net, config, seed=seed)
    engine = sim.engine()
    encoder = Encoder(engine)
    t0 = parse_time_ms(start)
    t1 = t0 + int(minutes * 60_000)
    processor = BatchProcessor(
        Rules.load(IngestSettings()), partition_of=PartitionMap(1), load_state=lambda sid, msg: None
    )
    readings: list[Any] = []
    truth: dict[tuple[str, int], int] = {}
    labels: dict[int, Any] = {}
    offset = 0
    for batch in engine.batches(t0, t1):
        for s, ts, inc in zip(batch.sensor.tolist(), batch.ts.tolist(), batch.incident.tolist(), strict=True):
            truth[(net.sensors[s].id, ts)] = inc
            if inc >= 0 and inc not in labels:
                labels[inc] = engine.incidents[inc].label(net, t0, t1)
        payloads = encoder.encode(batch)
        inbound = [
            Inbound(p, None, 0, offset + k, int(at))
            for k, (p, at) in enumerate(zip(payloads, batch.deliver.tolist(), strict=True))
        ]
        offset += len(inbound)
        readings.extend(r for _, r, _ in processor.process(inbound).clean)
    return readings, truth, labels, net


def score(readings: list[Any], batch: int) -> tuple:
    from services.detector.pipeline import ModelStore, Scorer
    from services.detector.profiles import ProfileSet
    from services.detector.settings import DetectorSettings

    ds = DetectorSettings()
    profiles = ProfileSet.load(ds.profiles_file)
    store = ModelStore(profiles, ds.zscore_threshold)
    scorer = Scorer(store, emit_scores=True)
    states: dict[str, Any] = {}
    flags: dict[tuple[str, int], bool] = {}
    severity: dict[tuple[str, int], str] = {}
    started = time.perf_counter()
    for i in range(0, len(readings), batch):
        result = scorer.process(readings[i : i + batch], states.get)
        states.update(result.states)
        for s in result.scores:
            flags[(s.sensor_id, s.ts)] = bool(s.is_anomaly)
        for a in result.anomalies:
            severity[(a.sensor_id, a.ts)] = a.severity
    elapsed = time.perf_counter() - started
    return flags, severity, {r.sensor_id: profiles.for_reading(r).name for r in readings}, elapsed


def profile_report(rows: list[tuple[str, int, bool, bool]], labels: dict[int, Any], hours: float) -> dict:
    """rows: (sensor_id, ts, flagged, in_incident) of one profile, in time order per sensor."""
    flagged = np.array([r[2] for r in rows], dtype=bool)
    inc = np.array([r[3] for r in rows], dtype=bool)
    tp, fp = int((flagged & inc).sum()), int((flagged & ~inc).sum())
    fn = int((~flagged & inc).sum())
    sensors = {r[0] for r in rows}
    # false alarm episodes: a sensor's run of flags that starts on a reading of no incident
    episodes, prev = 0, {}
    for sid, _, f, i in rows:
        if f and not prev.get(sid, False) and not i:
            episodes += 1
        prev[sid] = f
    return {
        "readings": len(rows),
        "sensors": len(sensors),
        "flagged": int(flagged.sum()),
        "flagged_rate": round(float(flagged.mean()), 5) if len(rows) else 0.0,
        "flagged_rate_normal": round(fp / max(int((~inc).sum()), 1), 5),
        "incident_readings": int(inc.sum()),
        "precision": round(tp / max(tp + fp, 1), 4),
        "recall": round(tp / max(tp + fn, 1), 4),
        "false_alarm_episodes": episodes,
        "false_alarms_per_sensor_hour": round(episodes / max(len(sensors) * hours, 1e-9), 3),
    }


def incidents_report(
    keys: list[tuple[str, int]], flags: dict, truth: dict, labels: dict, profile_of: dict, normal_rate: dict
) -> dict:
    """Share of labelled incidents with a flagged reading of theirs (at all, and beyond chance), delay to the first."""
    from scipy.stats import binom

    first: dict[int, int | None] = dict.fromkeys(labels)
    hits: dict[int, list[int]] = {i: [0, 0] for i in labels}  # readings, flagged
    rate: dict[int, float] = {}
    for key in keys:
        inc = truth.get(key, -1)
        if inc < 0:
            continue
        rate.setdefault(inc, normal_rate.get(profile_of[key[0]], 0.0))
        hits[inc][0] += 1
        if flags.get(key):
            hits[inc][1] += 1
            if first[inc] is None or key[1] < first[inc]:
                first[inc] = key[1]
    beyond = {i: k > 0 and binom.sf(k - 1, n, rate.get(i, 0.0)) < 0.01 for i, (n, k) in hits.items()}
    by_type: dict[str, list[int]] = defaultdict(list)
    for inc, at in first.items():
        by_type[labels[inc].type].append(at is not None)
    delays = [(at - labels[i].start_ms) / 1000 for i, at in first.items() if at is not None]
    return {
        "count": len(labels),
        "detected": round(float(np.mean([at is not None for at in first.values()])), 3) if labels else None,
        "detected_beyond_chance": round(float(np.mean(list(beyond.values()))), 3) if labels else None,
        "median_delay_s": round(float(np.median(delays)), 1) if delays else None,
        "by_type": {k: {"count": len(v), "detected": round(float(np.mean(v)), 3)} for k, v in sorted(by_type.items())},
        "each": {
            f"{labels[i].type}#{i}": {"readings": n, "flagged": k, "beyond_chance": bool(beyond[i])}
            for i, (n, k) in sorted(hits.items())
        },
    }


def alerts_report(readings: list[Any], flags: dict, severity: dict, truth: dict, t0: int, t1: int) -> dict:
    """Alerts and notifications the alerts service would make of the anomalies, per 10-minute window."""
    from services.alerts.config import load_config
    from services.alerts.settings import DEFAULT_CONFIG

    config = load_config(DEFAULT_CONFIG)
    rule = config.rule("SensorAnomaly")
    assert rule is not None
    route = config.route
    resolve_ms = int(rule.resolve_after_s * 1000)
    firing: dict[tuple, int] = {}  # fingerprint -> last anomaly ts
    alerts: list[tuple[int, tuple, bool]] = []  # (start ts, group key, during an incident)
    for r in sorted(readings, key=lambda r: r.ts):
        key = (r.sensor_id, r.ts)
        if not flags.get(key):
            continue
        labels = {"site": r.site, "zone": r.zone, "utility": r.utility, "sensor": r.sensor_id}
        fp = (*labels.values(), severity.get(key, "warning"))
        last = firing.get(fp)
        if last is None or r.ts - last > resolve_ms:
            group = tuple(labels.get(k, rule.name) if k != "alertname" else rule.name for k in route.group_by)
            alerts.append((r.ts, group, truth.get(key, -1) >= 0))
        firing[fp] = r.ts
    # notifications: a group's first alert waits group_wait, then new alerts go out at most every group_interval
    notes: list[int] = []
    next_flush: dict[tuple, int] = {}
    pending: dict[tuple, bool] = {}
    wait, interval = int(route.group_wait_s * 1000), int(route.group_interval_s * 1000)
    for at, group, _ in alerts:
        due = next_flush.get(group)
        if due is None or at > due + interval:
            notes.append(at + wait)
            next_flush[group] = at + wait
        elif at > due and not pending.get((group, due + interval)):
            pending[(group, due + interval)] = True
            notes.append(due + interval)
            next_flush[group] = due + interval
    # windows with and without a labelled incident (an incident reading of any sensor in the window)
    incident_windows = {(k[1] - t0) // WINDOW_MS for k, v in truth.items() if v >= 0}
    windows = range(max(1, (t1 - t0) // WINDOW_MS))
    out: dict[str, Any] = {"rule": rule.name, "resolve_after_s": rule.resolve_after_s, "group_by": route.group_by}
    for name, pick in (
        ("all_windows", list(windows)),
        ("windows_with_incident", [w for w in windows if w in incident_windows]),
        ("windows_without_incident", [w for w in windows if w not in incident_windows]),
    ):
        if not pick:
            out[name] = None
            continue
        per_alerts = [sum(1 for at, _, _ in alerts if (at - t0) // WINDOW_MS == w) for w in pick]
        per_notes = [sum(1 for at in notes if (at - t0) // WINDOW_MS == w) for w in pick]
        out[name] = {
            "windows": len(pick),
            "alerts_per_10min": round(float(np.mean(per_alerts)), 1),
            "notifications_per_10min": round(float(np.mean(per_notes)), 1),
        }
    out["alerts"] = len(alerts)
    out["alerts_explained_by_incident"] = sum(1 for _, _, inc in alerts if inc)
    out["notifications"] = len(notes)
    # what a rule labelled per zone (no sensor, no severity) would make of the same anomalies
    zone_last: dict[tuple, int] = {}
    zone_alerts = 0
    for r in sorted(readings, key=lambda r: r.ts):
        if flags.get((r.sensor_id, r.ts)):
            fp = (r.site, r.zone, r.utility)
            if fp not in zone_last or r.ts - zone_last[fp] > resolve_ms:
                zone_alerts += 1
            zone_last[fp] = r.ts
    out["alerts_if_labelled_per_zone"] = zone_alerts
    out["alerts_if_labelled_per_zone_per_10min"] = round(zone_alerts * WINDOW_MS / max(t1 - t0, 1), 1)
    return out


def measure(minutes: float, rate: float, seed: int, start: str, batch: int = 500) -> dict:
    from shared.timeutil import parse_time_ms

    t0 = parse_time_ms(start)
    t1 = t0 + int(minutes * 60_000)
    readings, truth, labels, _ = simulate(minutes, rate, seed, start)
    flags, severity, profile_of, elapsed = score(readings, batch)
    hours = minutes / 60
    per_profile: dict[str, list] = defaultdict(list)
    for r in readings:
        key = (r.sensor_id, r.ts)
        per_profile[profile_of[r.sensor_id]].append((r.sensor_id, r.ts, flags.get(key, False), truth.get(key, -1) >= 0))
    every = [row for rows in per_profile.values() for row in rows]
    keys = [(r.sensor_id, r.ts) for r in readings]
    profiles = {name: profile_report(rows, labels, hours) for name, rows in sorted(per_profile.items())}
    normal_rate = {name: p["flagged_rate_normal"] for name, p in profiles.items()}
    return {
        "minutes": minutes,
        "rate": rate,
        "seed": seed,
        "start": start,
        "clean_readings": len(readings),
        "score_seconds": round(elapsed, 1),
        "pooled": profile_report(every, labels, hours),
        "profiles": profiles,
        "incidents": incidents_report(keys, flags, truth, labels, profile_of, normal_rate),
        "alerts": alerts_report(readings, flags, severity, truth, t0, t1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="simulated minutes from the demo's start")
    parser.add_argument("--rate", type=float, default=200.0, help="the demo's FLOWWATCH_DEMO_RATE")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start", default="2026-12-05T03:00:00Z", help="the demo's start (it runs in real time)")
    parser.add_argument("--batch", type=int, default=500, help="detector micro-batch")
    parser.add_argument("--label", default="", help="name of this run in the results file")
    parser.add_argument("--out", type=Path, default=RESULTS / "demo_alarms.json")
    args = parser.parse_args(argv)
    result = measure(args.minutes, args.rate, args.seed, args.start, args.batch)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        runs = orjson.loads(args.out.read_bytes()) if args.out.exists() else {}
        runs[args.label or f"{args.minutes:g}min"] = result
        args.out.write_bytes(orjson.dumps(runs, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
