"""The kernels built ahead of time (`detector build-kernels`) give the JIT kernels' results bit for bit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.detector import compiled, kernels
from services.detector.model import AnomalyModel
from services.detector.offline import fit_csv
from services.detector.state import RollingState, StateConfig
from tests.unit.test_detector_kernels import stream
from tests.unit.test_detector_plain_csv import messy_csv

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build():
    """The build `score` loads (where `build-kernels` puts it), made by the command itself."""
    run = subprocess.run(
        [sys.executable, "-m", "services.detector", "build-kernels"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    module = compiled.load(compiled.BUILD_DIR)
    assert module is not None
    return module


@pytest.mark.parametrize("late", [False, True])
def test_built_kernels_equal_the_jit_kernels(build, monkeypatch, late):
    m, sensors = 3, 4
    rs = RollingState([f"m{j}" for j in range(m)], StateConfig(tz_offset_h=2, flat_warmup=20))
    rs.track_shift = True
    rs.shift_scale = np.array([2.0, 5.0, 0.5])
    rs.shift_drift = np.array([0.0, 0.01, -0.2])
    model = AnomalyModel([f"m{j}" for j in range(m)])
    model.threshold = 1.3
    x, ts, idx = stream(2500, sensors, m, seed=11)
    assert hasattr(kernels.rolling_run, "py_func") and hasattr(kernels.persist_run, "py_func")  # the JIT's
    results = []
    for rolling_run, persist_run in (
        (kernels.rolling_run, kernels.persist_run),
        (build.rolling_run, build.persist_run),
    ):
        monkeypatch.setattr(kernels, "rolling_run", rolling_run)
        monkeypatch.setattr(kernels, "persist_run", persist_run)
        state = rs.layout.empty(sensors)
        out = []
        for lo, hi in ((0, 1), (1, 900), (900, 2500)):  # batches, the state carried over
            flags = np.zeros(hi - lo, dtype=bool) if late else None
            feats = rs.run(state, x[lo:hi], ts[lo:hi], idx[lo:hi], flags)
            raw = np.abs(feats[:, 3 * m : 4 * m]).max(axis=1)
            floor = raw * 0.5 if late else None
            smoothed, flagged = model._persist(state, raw, idx[lo:hi], flags, floor)
            out += [feats, smoothed, flagged, flags if late else np.zeros(0)]
        results.append((out, state))
    (jit_out, jit_state), (aot_out, aot_state) = results
    assert jit_out[0].shape == (1, rs.n_features)
    for a, b in zip(jit_out, aot_out, strict=True):
        np.testing.assert_array_equal(a, b)
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(np.signbit(a), np.signbit(b))
    np.testing.assert_array_equal(jit_state, aot_state)


def test_score_loads_the_build_without_numba_and_writes_the_same_bytes(build, tmp_path):
    train = messy_csv(tmp_path / "train.csv", "Z", rows=3000, seed=8)
    test = messy_csv(tmp_path / "test.csv", "Z", rows=2000, seed=9, exponents=False)
    fit_csv(train, tmp_path / "m")
    outputs = {}
    for mode in ("built", "jit"):
        out = tmp_path / f"{mode}.csv"
        argv = ["score", "--data", str(test), "--model-dir", str(tmp_path / "m"), "--output", str(out)]
        argv += ["--jit"] if mode == "jit" else []
        probe = (
            "import sys; from services.detector import cli; "
            f"code = cli.main({argv!r}); "
            "print(code, sorted(m for m in ('numba', 'scipy', 'pandas', 'sklearn') if m in sys.modules))"
        )
        run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        outputs[mode] = (run.stdout.splitlines()[-1], out.read_bytes())
    assert outputs["built"][0] == "0 []"
    assert outputs["jit"][0] == "0 ['numba', 'scipy']"
    assert outputs["built"][1] == outputs["jit"][1]
    assert outputs["built"][1].count(b"\n") == 2001


def test_a_change_to_the_kernels_names_another_build(monkeypatch, tmp_path):
    source = tmp_path / "kernels.py"
    source.write_bytes(compiled.KERNELS_SOURCE.read_bytes())
    monkeypatch.setattr(compiled, "KERNELS_SOURCE", source)
    same = compiled.build_name()
    source.write_bytes(source.read_bytes() + b"\n# changed\n")
    assert compiled.build_name() != same


def test_a_build_of_other_kernels_is_not_loaded(build, monkeypatch, tmp_path):
    # the current build, copied under its name, loads; once the source changes that file is not the build any more
    source = tmp_path / "kernels.py"
    source.write_bytes(compiled.KERNELS_SOURCE.read_bytes())
    monkeypatch.setattr(compiled, "KERNELS_SOURCE", source)
    shutil.copy(compiled.build_path(compiled.BUILD_DIR), compiled.build_path(tmp_path))
    assert compiled.load(tmp_path) is not None
    source.write_bytes(source.read_bytes() + b"\n# changed\n")
    assert compiled.load(tmp_path) is None  # no build for this source: the JIT kernels are used


def test_a_damaged_build_is_not_loaded(monkeypatch, tmp_path):
    monkeypatch.setattr(compiled, "BUILD_DIR", tmp_path)
    compiled.build_path(tmp_path).write_bytes(b"not a shared object")
    assert compiled.load(tmp_path) is None


def test_every_kernel_called_from_python_is_in_the_build():
    # a kernel left out would run as plain Python in a `score` that uses the build
    public = {
        name
        for name, fn in vars(kernels).items()
        if not name.startswith("_") and hasattr(fn, "py_func") and fn.py_func.__module__ == kernels.__name__
    }
    assert public == set(compiled.EXPORTED)
