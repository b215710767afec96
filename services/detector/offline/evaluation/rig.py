"""Synthetic pump/valve test-rig recordings, shaped like the public SKAB benchmark.

A centrifugal pump driven by an electric motor pushes water through a loop with
valves. Eight sensors at 1 Hz: two accelerometers (vibration RMS), motor current,
outlet pressure, motor temperature, fluid thermocouple, supply voltage and volume
flow. The physics is deliberately simple but coupled the way a real rig is:
flow follows speed and valve opening, pressure follows the pump curve and the
flow, current follows hydraulic power, vibration follows speed and off-design
operation, the motor warms up slowly through the whole recording (a drift that is
*normal*), the supply voltage wanders, and every sensor has its own noise and
resolution. Each recording has its own operating point and noise levels.

A recording is a training segment of normal operation (a few hundred rows) and a
test segment holding one to three labelled anomalies of these kinds:

- ``valve_outlet``  partial closure downstream: flow down, pressure up, current down
- ``cavitation``    restriction upstream: pressure down and unsteady, vibration and its spread up
- ``imbalance``     rotor imbalance: vibration up (one accelerometer more), current up and wavy
- ``leak``          a leak after the pump: flow up, pressure down
- ``drift``         one sensor drifts slowly away from the truth
- ``sensor_fault``  one sensor sticks, drops out to zero, spikes, or gets noisy
- ``overheat``      the motor temperature climbs faster than it should
- ``speed_drop``    the drive loses a few percent of speed: everything moves a little

Severities are drawn from wide ranges, from obvious to barely above the noise.
The labels cover the whole anomalous interval, like SKAB's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SENSORS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
KINDS = ("valve_outlet", "cavitation", "imbalance", "leak", "drift", "sensor_fault", "overheat", "speed_drop")


@dataclass
class Recording:
    name: str
    train: pd.DataFrame
    test: pd.DataFrame  # has an ``anomaly`` column (0/1) besides the sensors
    incidents: list[dict] = field(default_factory=list)


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    e = rng.normal(0, sigma * np.sqrt(1 - phi * phi), n)
    out = np.empty(n)
    acc = rng.normal(0, sigma)
    for i in range(n):
        acc = phi * acc + e[i]
        out[i] = acc
    return out


def _ramp(n: int, start: int, end: int, rise: int) -> np.ndarray:
    """0 outside [start, end), rising to 1 over ``rise`` rows at both edges."""
    t = np.arange(n)
    up = np.clip((t - start) / max(rise, 1), 0, 1)
    down = np.clip((end - t) / max(rise, 1), 0, 1)
    return np.minimum(up, down) * ((t >= start) & (t < end + rise))


def generate(seed: int, n_train: int | None = None, n_test: int | None = None) -> Recording:
    rng = np.random.default_rng(seed)
    n_train = n_train or int(rng.integers(300, 451))
    n_test = n_test or int(rng.integers(800, 1201))
    n = n_train + n_test

    # operating point of this recording
    q_nom = rng.uniform(28, 36)
    p_nom = rng.uniform(0.8, 2.2)
    i0, i1 = rng.uniform(0.6, 1.0), rng.uniform(1.0, 1.6)
    a1_nom, a2_nom = rng.uniform(0.18, 0.24), rng.uniform(0.22, 0.30)
    t_amb, t_rise, tau = rng.uniform(60, 75), rng.uniform(4, 12), rng.uniform(1500, 5000)
    tc0 = rng.uniform(22, 28)
    start_t = rng.uniform(1.0, 3.0) * tau  # the rig has been running for a while: warm-up mostly done

    speed = 1 + _ar1(rng, n, 0.995, 0.004)
    valve = np.ones(n) + _ar1(rng, n, 0.99, 0.003)
    inlet = np.ones(n)
    leak = np.zeros(n)
    vib_gain1, vib_gain2 = np.ones(n), np.ones(n)
    vib_noise = np.ones(n)
    cur_wave = np.zeros(n)
    heat = np.zeros(n)
    labels = np.zeros(n, dtype=np.int8)
    sensor_effects: list[tuple[str, str, int, int, float]] = []
    incidents: list[dict] = []

    # place 1-3 non-overlapping incidents in the test part, ~20-45% of its rows
    k = int(rng.choice([1, 2, 2, 3]))
    budget = rng.uniform(0.2, 0.45) * n_test
    lengths = rng.dirichlet(np.ones(k)) * budget
    lengths = np.maximum(lengths, 40).astype(int)
    gaps = rng.dirichlet(np.ones(k + 1)) * max(n_test - lengths.sum() - 60, 30)
    pos = n_train + 60
    for j in range(k):
        pos += int(gaps[j])
        start, end = pos, min(pos + int(lengths[j]), n - 1)
        pos = end + 20
        if start >= n - 10:
            break
        kind = str(rng.choice(KINDS))
        sev = rng.uniform(0.15, 1.0)  # 0: barely visible, 1: obvious
        rise = int(rng.integers(2, 25))
        w = _ramp(n, start, end, rise)
        detail: dict = {"kind": kind, "start": start - n_train, "end": end - n_train, "severity": round(sev, 2)}
        if kind == "valve_outlet":
            valve -= w * (0.08 + 0.45 * sev)
        elif kind == "cavitation":
            inlet -= w * (0.03 + 0.15 * sev)
            vib_noise += w * (0.5 + 3 * sev)
            vib_gain1 += w * (0.05 + 0.25 * sev)
            vib_gain2 += w * (0.05 + 0.2 * sev)
        elif kind == "imbalance":
            vib_gain1 += w * (0.08 + 0.7 * sev)
            vib_gain2 += w * (0.03 + 0.3 * sev)
            cur_wave += w * (0.01 + 0.05 * sev)
        elif kind == "leak":
            leak += w * (0.03 + 0.15 * sev)
        elif kind == "drift":
            sensor = str(rng.choice(["Pressure", "Volume Flow RateRMS", "Current", "Thermocouple"]))
            detail["sensor"] = sensor
            sensor_effects.append((sensor, "drift", start, end, 0.02 + 0.12 * sev))
        elif kind == "sensor_fault":
            sensor = str(rng.choice(SENSORS))
            mode = str(rng.choice(["stuck", "zero", "spikes", "noisy"]))
            detail.update(sensor=sensor, mode=mode)
            sensor_effects.append((sensor, mode, start, end, sev))
        elif kind == "overheat":
            heat += np.clip(np.cumsum(w) / max(end - start, 1), 0, 1) * (1.0 + 6 * sev) * (np.arange(n) < end + rise)
        elif kind == "speed_drop":
            speed -= w * (0.01 + 0.06 * sev)
        labels[
            start : end + (rise if kind in {"valve_outlet", "cavitation", "imbalance", "leak", "speed_drop"} else 0)
        ] = 1
        incidents.append(detail)

    # physics
    v = np.clip(valve, 0.05, 1.2)
    q = q_nom * speed * np.sqrt(v) * np.clip(inlet, 0.5, 1.2) * (1 + leak)
    qr = q / q_nom
    p = p_nom * (1.3 * speed**2 * np.clip(inlet, 0.5, 1.2) ** 2 - 0.3 * qr**2) - p_nom * 0.6 * leak
    cav = vib_noise - 1
    p = p + p_nom * 0.05 * cav * rng.normal(0, 1, n)
    power = np.clip(p / p_nom, 0.05, None) * qr
    cur = i0 + i1 * power + cur_wave * np.sin(np.arange(n) * 2 * np.pi / rng.uniform(8, 20)) * (i0 + i1)
    volt = 230 + _ar1(rng, n, 0.98, 1.2) - 0.8 * (cur - i0 - i1)
    t = start_t + np.arange(n)
    motor_load = (cur - i0) / i1
    temp = t_amb + t_rise * (1 - np.exp(-t / tau)) * (0.8 + 0.2 * motor_load) + heat
    thermo = tc0 + 0.0001 * np.arange(n) * rng.uniform(0.2, 1.5) + 0.05 * _ar1(rng, n, 0.995, 1)
    shared_vib = rng.normal(0, 1, n)
    offdesign = 1 + 0.4 * (qr - 1) ** 2
    a1 = (
        a1_nom
        * speed**2
        * offdesign
        * vib_gain1
        * (1 + 0.03 * vib_noise * (0.6 * shared_vib + 0.8 * rng.normal(0, 1, n)))
    )
    a2 = (
        a2_nom
        * speed**2
        * offdesign
        * vib_gain2
        * (1 + 0.03 * vib_noise * (0.6 * shared_vib + 0.8 * rng.normal(0, 1, n)))
    )

    noise = {
        "Accelerometer1RMS": 0.0,
        "Accelerometer2RMS": 0.0,
        "Current": rng.uniform(0.01, 0.04) * (i0 + i1),
        "Pressure": rng.uniform(0.005, 0.02) * p_nom,
        "Temperature": 0.25,
        "Thermocouple": 0.05,
        "Voltage": 0.6,
        "Volume Flow RateRMS": rng.uniform(0.005, 0.015) * q_nom,
    }
    truth = {
        "Accelerometer1RMS": a1,
        "Accelerometer2RMS": a2,
        "Current": cur,
        "Pressure": p,
        "Temperature": temp,
        "Thermocouple": thermo,
        "Voltage": volt,
        "Volume Flow RateRMS": q,
    }
    data = {name: truth[name] + rng.normal(0, noise[name], n) for name in SENSORS}
    # sensor resolution: pressure transmitters on rigs like this one are coarse
    res_p = p_nom * rng.uniform(0.002, 0.01)
    data["Pressure"] = np.round(data["Pressure"] / res_p) * res_p
    data["Temperature"] = np.round(data["Temperature"], 2)

    for sensor, mode, start, end, sev in sensor_effects:
        x = data[sensor]
        scale = np.std(x[:n_train]) + 1e-3 * abs(np.mean(x[:n_train]))
        seg = slice(start, end)
        if mode == "drift":
            x[seg] += np.linspace(0, sev * np.mean(np.abs(x[:n_train])), end - start) * rng.choice([-1, 1])
        elif mode == "stuck":
            x[seg] = x[start - 1]
        elif mode == "zero":
            x[seg] = 0.0
        elif mode == "spikes":
            hits = rng.random(end - start) < 0.08 + 0.3 * sev
            x[seg] += hits * rng.choice([-1, 1], end - start) * scale * (4 + 10 * sev)
        elif mode == "noisy":
            x[seg] += rng.normal(0, scale * (1.5 + 4 * sev), end - start)

    stamps = pd.date_range("2020-03-01", periods=n, freq="1s") + pd.Timedelta(seconds=int(rng.integers(0, 86400 * 30)))
    frame = pd.DataFrame({"datetime": stamps.strftime("%Y-%m-%d %H:%M:%S")})
    for name in SENSORS:
        frame[name] = np.round(data[name], 5)
    train = frame.iloc[:n_train].rename(columns={"datetime": "timestamp"}).reset_index(drop=True)
    test = frame.iloc[n_train:].rename(columns={"datetime": "timestamp"}).reset_index(drop=True)
    test["anomaly"] = labels[n_train:]
    return Recording(f"rig-{seed:03d}", train, test, incidents)


def write(recording: Recording, directory) -> tuple:
    """Write ``<name>-train.csv``, ``<name>-test.csv`` (sensors only) and ``<name>-labels.csv``."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train = directory / f"{recording.name}-train.csv"
    test = directory / f"{recording.name}-test.csv"
    labels = directory / f"{recording.name}-labels.csv"
    recording.train.to_csv(train, index=False)
    recording.test.drop(columns=["anomaly"]).to_csv(test, index=False)
    recording.test[["timestamp", "anomaly"]].to_csv(labels, index=False)
    return train, test, labels
