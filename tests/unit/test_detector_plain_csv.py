"""`detector score`/`fit` read a plain CSV and write the scores without pandas: same values, same bytes.

The pandas reader (``_read_with_pandas``, what every file went through before) stays for what the plain
reader declines; each test holds the two equal on files where the plain reader does the work.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.detector.offline import (
    DataError,
    Stream,
    _epoch_ms,
    _read_with_pandas,
    _separator,
    fit_csv,
    plain_csv,
    read_columns,
    score_file,
    score_frame,
)

ROOT = Path(__file__).resolve().parents[2]
#: Time stamp layouts a file may use (one per file), each with its own offsets and fractions.
LAYOUTS = {
    "Z": "{date}T{time}Z",
    "naive": "{date} {time}",
    "offset": "{date}T{time}{sign}05:30",
    "compact offset": "{date}T{time}.{frac}{sign}0100",
    "minutes": "{date}T{hm}",
    "date": "{date}",
}


def _pandas_numbers(texts: list[str]) -> np.ndarray:
    return pd.to_numeric(pd.Series(texts, dtype="str").str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit where it matters: values, NaN places and the sign of zeros."""
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a), np.signbit(b))


def _stamp(rng: random.Random, layout: str, second: int) -> str:
    t = pd.Timestamp("2026-03-28T20:00:00") + pd.Timedelta(seconds=second)  # across a month and a DST weekend
    return LAYOUTS[layout].format(
        date=t.strftime("%Y-%m-%d"),
        time=t.strftime("%H:%M:%S"),
        hm=t.strftime("%H:%M"),
        frac=f"{rng.randrange(1000):03d}",
        sign=rng.choice("+-") if layout != "offset" else "+",
    )


def messy_csv(path: Path, layout: str, rows: int = 600, seed: int = 0, sep: str = ",", exponents: bool = True) -> Path:
    """A stream as users send them: gaps, junk values, quoted fields, a label and a text column, extra spaces.

    ``exponents``: some values are written with an exponent or 17 digits (pandas reads those columns).
    """
    rng = random.Random(seed)
    junk = ["", "", "n/a", "ERR", "nan", "inf", "-inf", " 3.5 ", "-0.0", "+.5", "7."]
    junk += ["1e3", "0.30000000000000004"] if exponents else []
    header = ["timestamp", "pressure", "flow", "Temp (C)", "anomaly", "note", "empty"]
    lines = [sep.join(header)]
    for i in range(rows):
        values = [f"{1.5 + 0.01 * rng.gauss(0, 1):.5f}", f"{120 + rng.gauss(0, 2):.3f}", str(rng.randint(20, 30))]
        if i % 7 == 3:
            values[rng.randrange(3)] = rng.choice(junk)
        if i % 11 == 5:
            values[0] = f'"{values[0]}"'  # a quoted number
        stamp = _stamp(rng, layout, i * 37)
        note = rng.choice(["ok", "", f'"valve {sep} closed"', '"said ""stop"""'])
        lines.append(sep.join([stamp, *values, str(int(i % 50 == 0)), note, ""]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _pandas_stream(path: Path, time_column: str = "timestamp") -> Stream:
    return _read_with_pandas(path, _separator(path), time_column)


def assert_same_stream(a: Stream, b: Stream) -> None:
    assert a.names == b.names
    assert _same(a.values, b.values)
    assert np.array_equal(a.ts, b.ts) and a.ts.dtype == b.ts.dtype == np.int64
    assert a.times == b.times


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_plain_reader_reads_a_messy_stream_as_pandas_does(tmp_path, layout):
    path = messy_csv(tmp_path / "in.csv", layout)
    table = plain_csv.read_rows(path, ",")
    assert table is not None  # quoted fields and all, no pandas needed to split this file
    names, columns = table
    if layout != "date":  # pandas parses these; a date with an offset is not ISO 8601 to it
        assert plain_csv.parse_iso_times(columns[names.index("timestamp")]) is not None
    assert_same_stream(read_columns(path), _pandas_stream(path))


def test_a_plain_file_without_quotes_or_junk_takes_no_pandas_at_all(tmp_path):
    path = tmp_path / "clean.csv"
    pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=500, freq="1s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
            "a": np.round(np.random.default_rng(0).normal(5, 1, 500), 6),
            "b": np.arange(500),
        }
    ).to_csv(path, index=False, lineterminator="\r\n")
    names, columns = plain_csv.read_rows(path, ",")
    assert names == ["timestamp", "a", "b"]
    assert plain_csv.parse_iso_times(columns[0]) is not None
    assert all(plain_csv.parse_numbers(c) is not None for c in columns[1:])
    assert_same_stream(read_columns(path), _pandas_stream(path))


@pytest.mark.parametrize(
    "text",
    [
        "timestamp,a\n2026-01-01T00:00:00Z,1\n2026-01-01T00:00:01+00:00,2\n",  # two layouts in one column
        "timestamp;a\n01/02/21 13;1\n01/02/21 14;2\n",  # day-first SCADA stamps
        "timestamp,a,a\n2026-01-01,1,2\n",  # duplicate names: pandas renames them
        "timestamp,a\n2026-01-01,1,2\n2026-01-02,3,4\n",  # wider rows: pandas makes an index of the first field
        "timestamp,a\n2026-01-01,1\n   \n2026-01-02,2\n",  # a line of spaces (pandas skips it)
        'timestamp,a\n2026-01-01,"1\n2026-01-02,2\n',  # a quote never closed
        "timestamp,a\n2026-01-01T25:00:00,1\n",  # hour 25: pandas' error message
        "timestamp,a\n2300-01-01T00:00:00,1\n",  # beyond pandas' nanosecond range
        "\ufefftimestamp,a\n2026-01-01,1.5\n",  # a byte order mark
        "timestamp,a,b\n2026-01-01,-0,1\n2026-01-02,1,1.5e3\n",  # -0 among integers, an exponent
    ],
)
def test_what_the_plain_reader_declines_reads_as_before(tmp_path, text):
    path = tmp_path / "odd.csv"
    path.write_text(text, encoding="utf-8")
    try:
        expected: Stream | str = _pandas_stream(path)
    except Exception as exc:  # noqa: BLE001 - the same failure is the expected behaviour
        expected = f"{type(exc).__name__}: {exc}"
    try:
        got: Stream | str = read_columns(path)
    except Exception as exc:  # noqa: BLE001
        got = f"{type(exc).__name__}: {exc}"
    if isinstance(expected, str):
        assert got == expected
    else:
        assert isinstance(got, Stream)
        assert_same_stream(got, expected)


def test_numbers_are_read_as_pandas_reads_them():
    rng = random.Random(7)
    odd = ["", " ", "nan", "NaN", "inf", "-Infinity", "n/a", "-", ".", "+", "1_000", "3,5", "0x10", "1.2.3", "12abc"]
    odd += ["\u0663", "\uff11\uff12", "-0.0", "+0", "00012", ".5", "5.", "-.5", "\t7\t", "True", "1e5", "9" * 18]
    odd += ["valve 3", "ID123", "5 kPa", "\x1f5", "\u00a05", "\t5\x0b", "1 000"]
    checked = 0
    for _ in range(400):
        texts = []
        hostile = rng.random() < 0.3  # long mantissas, exponents: pandas' own rounding, so pandas reads them
        for _ in range(rng.randint(1, 40)):
            digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 17 if hostile else 15)))
            cut = rng.randint(0, len(digits))
            plain = rng.choice(["", "-", "+"]) + digits[:cut] + rng.choice([".", ""]) + digits[cut:]
            other = repr(rng.uniform(-1e6, 1e6)) if hostile else rng.choice(odd[:10])
            texts.append(rng.choice([plain, plain, plain, other, rng.choice(odd)]))
        got = plain_csv.parse_numbers(texts)
        if got is not None:
            checked += 1
            assert _same(got, _pandas_numbers(texts)), texts
    assert checked > 100  # the plain reader reads most columns itself


def test_time_stamps_are_read_as_pandas_reads_them():
    rng = random.Random(3)
    checked = 0
    for _ in range(300):
        layout = rng.choice(list(LAYOUTS))
        stamps = [_stamp(rng, layout, rng.randrange(-(10**9), 10**9)) for _ in range(rng.randint(1, 20))]
        if rng.random() < 0.2:  # a field out of range somewhere
            i = rng.randrange(len(stamps))
            stamps[i] = stamps[i][:5] + "13" + stamps[i][7:]
        got = plain_csv.parse_iso_times(stamps)
        try:
            expected = _epoch_ms(Path("x.csv"), pd.Series(stamps, dtype="str"))
        except DataError:
            assert got is None, stamps
            continue
        if got is not None:
            checked += 1
            assert np.array_equal(got, expected), stamps
    assert checked > 150


def test_score_writes_the_bytes_the_pandas_path_wrote(tmp_path):
    train = messy_csv(tmp_path / "train.csv", "offset", rows=3000, seed=1)
    test = messy_csv(tmp_path / "test.csv", "offset", rows=800, seed=2)
    model = fit_csv(train, tmp_path / "m")
    out = score_file(test, tmp_path / "m", tmp_path / "plain.csv")
    # the path every file took before: pandas' reader, the same scoring, DataFrame.to_csv
    stream = _pandas_stream(test)
    scored, _, _ = score_frame(model, stream.matrix(model.metrics), stream.ts)
    before = pd.DataFrame(
        {
            "timestamp": np.array(stream.times, dtype=object),
            "score": np.round(scored.score, 6),
            "anomaly": scored.anomaly.astype(int),
        }
    )
    before.to_csv(tmp_path / "pandas.csv", index=False)
    assert (tmp_path / "plain.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    assert out.anomaly.sum() == before["anomaly"].sum() and len(out) == 800
    pd.testing.assert_frame_equal(out.frame(), before)


def test_fit_learns_the_same_model_from_either_reader(tmp_path, monkeypatch):
    train = messy_csv(tmp_path / "train.csv", "Z", rows=3000, seed=4)
    plain = fit_csv(train, tmp_path / "plain")
    monkeypatch.setattr(plain_csv, "read_rows", lambda path, sep: None)  # every file through pandas, as before
    before = fit_csv(train, tmp_path / "pandas")
    assert plain.metrics == before.metrics == ("pressure", "flow", "Temp (C)")
    assert plain.threshold == before.threshold
    assert {d.name: d.threshold for d in plain.detectors} == {d.name: d.threshold for d in before.detectors}
    assert _same(plain.initial_state, before.initial_state)


def test_score_on_a_plain_csv_imports_no_pandas(tmp_path):
    train = messy_csv(tmp_path / "train.csv", "Z", rows=3000, seed=5)
    test = messy_csv(tmp_path / "test.csv", "Z", rows=300, seed=6, exponents=False)
    fit_csv(train, tmp_path / "m")
    probe = (
        "import sys; from services.detector import cli; "
        f"code = cli.main(['score', '--data', {str(test)!r}, '--model-dir', {str(tmp_path / 'm')!r}, "
        f"'--output', {str(tmp_path / 'out.csv')!r}]); "
        "print(code, sorted(m for m in ('pandas', 'sklearn') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "0 []", run.stdout


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("timestamp,a\n", "no data rows"),
        ("timestamp,a\n9999-12-31T23:00:00Z,1\n", "outside what can be scored"),
    ],
)
def test_a_file_that_cannot_be_scored_is_a_data_error(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "in.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=why):
        read_columns(path)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a file"):
        read_columns(tmp_path)


def test_a_nul_inside_a_number_is_missing_as_pandas_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"timestamp,a\n2026-01-01T00:00:00Z,1\x002\n2026-01-01T00:00:01Z,3\n")
    got = read_columns(path).values[:, 0]
    assert np.isnan(got[0]) and got[1] == 3.0
