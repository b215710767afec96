"""A plain CSV stream read and a scores CSV written without pandas: what ``detector score`` needs to start light.

Importing pandas costs ~0.3 CPU s and its reader as much again on 60,000 rows: most of a one-stream
``score``. The readers here take the regular case (every row as wide as the header, well-formed
quoting, numbers written as plain decimals, one ISO 8601 layout for every time stamp) and give the
same values the pandas reader gives; anything else makes them answer ``None`` and the caller reads
the file (or that column) with pandas, as before. Where the two could differ they decline:

* numbers: a plain decimal of at most 15 digits is read exactly (correctly rounded) both by Python's
  ``float`` and by pandas' own ``precise_xstrtod``; longer mantissas, exponents, ``-0`` in a column
  of integers and anything else with a digit in it go to pandas; text without a digit is missing
  (NaN) there as here, ``inf``/``infinity`` infinite;
* time stamps: ``YYYY-MM-DD[THH:MM[:SS[.fraction]][Z|±HH:MM|±HHMM]]`` (``T`` or a space), one layout
  in the whole column, fields in range and years 1678-2261; anything else goes to pandas.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

#: Mantissas up to this many digits are exact in a double: both parsers round them the same.
EXACT_DIGITS = 15
_INFINITE = {"inf": np.inf, "+inf": np.inf, "-inf": -np.inf, "infinity": np.inf, "+infinity": np.inf}
_INFINITE["-infinity"] = -np.inf
_PLAIN = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)", re.ASCII)
_DIGIT = re.compile(r"\d", re.ASCII)
_NOT_NUMERIC = re.compile(r"[^0-9.+eE-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: ASCII white space: what both Python's and Arrow's strip take away.
_SPACE = " \t\n\r\f\v"
#: What makes the csv module quote a field (QUOTE_MINIMAL, as pandas writes).
_QUOTED = re.compile(r'[,"\r\n]')
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?)?", re.ASCII
)
_ZERO, _NINE, _DOT, _PLUS, _MINUS = (ord(c) for c in "09.+-")
#: Exact powers of ten (every one up to 1e22 is a double).
_POW10 = np.array([float(f"1e{k}") for k in range(EXACT_DIGITS + 1)])


def read_rows(path: Path, sep: str) -> tuple[list[str], list[list[str]]] | None:
    """``(header, columns)`` of a regular CSV, or None for anything pandas must read.

    Regular: UTF-8, well-formed quoting, every row as wide as the header (at least two columns),
    header names unique and not empty once stripped, at least one data row; blank lines are skipped,
    as pandas does.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (UnicodeDecodeError, OSError):
        return None
    if "\0" in text:
        return None  # the number reader takes NUL for padding; pandas reads such a field as missing
    if "\r\n" in text and '"' not in text:
        text = text.replace("\r\n", "\n")
    if '"' in text or "\r" in text or "\0" in text:
        rows = _csv_rows(text, sep)
        if rows is None:
            return None
        header, body = rows[0], rows[1:]
        if any(len(row) != len(header) for row in body):
            return None
        columns = [list(column) for column in zip(*body, strict=True)]
    else:
        # the common case, a field never quoted: str.split is several times faster than the csv module
        lines = [line for line in text.split("\n") if line]
        if len(lines) < 2:
            return None
        header = lines[0].split(sep)
        width = len(header)
        if any(line.count(sep) != width - 1 for line in lines):
            return None
        fields = sep.join(lines[1:]).split(sep)
        columns = [fields[j::width] for j in range(width)]
    names = [name.strip() for name in header]
    if len(names) < 2 or "" in names or len(set(names)) != len(names) or not columns[0]:
        return None
    return names, columns


def _csv_rows(text: str, sep: str) -> list[list[str]] | None:
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True) if row]
    except csv.Error:
        return None
    return rows if len(rows) >= 2 else None


def parse_numbers(texts: list[str]) -> np.ndarray | None:
    """float64 of each text as ``pd.to_numeric(text.strip(), errors="coerce")`` gives it, or None (use pandas)."""
    plain, values = _plain_decimals(texts)
    for i in np.flatnonzero(~plain):
        value = _number(texts[i])
        if value is None:
            return None
        values[i] = value
    # pandas reads a column of integers as integers: "-0" is then 0, not -0.0
    negative_zero = np.flatnonzero((values == 0) & np.signbit(values))
    if any("." not in texts[i] for i in negative_zero):
        return None
    return values


def _plain_decimals(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Which texts are plain decimals (``[+-]digits[.digits]``, at most 15 digits) and their values.

    Read from their bytes at once: the digits as an exact integer (below 2**53) divided by the exact power
    of ten of its decimals, one correctly rounded division: what Python's ``float`` and pandas' parser both
    give for such a text. The values of the other texts are left unset.
    """
    n = len(texts)
    values = np.empty(n)
    try:
        raw = np.array(texts, dtype=bytes)
    except UnicodeEncodeError:
        return np.zeros(n, dtype=bool), values
    width = raw.dtype.itemsize
    if n == 0 or width == 0:
        return np.zeros(n, dtype=bool), values
    # one row per character position: every step below is a vector operation along the texts
    codes = np.ascontiguousarray(raw.view(np.uint8).reshape(n, width).T)
    digit = (codes - _ZERO) <= (_NINE - _ZERO)  # unsigned: below '0' wraps round
    dot = codes == _DOT
    signed = (codes[0] == _PLUS) | (codes[0] == _MINUS)
    other = ~(digit | dot | (codes == 0))
    other[0] &= ~signed
    digits = np.count_nonzero(digit, axis=0)
    plain = ~other.any(axis=0) & (np.count_nonzero(dot, axis=0) <= 1) & (digits >= 1) & (digits <= EXACT_DIGITS)
    if not plain.all():
        codes, digit, dot = codes[:, plain], digit[:, plain], dot[:, plain]
    mantissa = np.zeros(codes.shape[1], dtype=np.int64)
    for j in range(width):
        mantissa = np.where(digit[j], mantissa * 10 + (codes[j].astype(np.int64) - _ZERO), mantissa)
    decimals = np.count_nonzero(digit & (np.cumsum(dot, axis=0) > 0), axis=0)
    value = mantissa.astype(np.float64) / _POW10[decimals]
    values[plain] = np.where(codes[0] == _MINUS, -value, value)
    return plain, values


def _number(text: str) -> float | None:
    """One text's value if pandas surely reads it so, else None.

    pandas reads a number as ``[+-]digits[.digits][(e|E)[+-]digits]``, or ``inf``/``infinity``: a text
    with a digit and any other character is missing. Only ASCII is judged here (which characters count
    as white space differs between Python and pandas' Arrow strings beyond it).
    """
    if not text.isascii():
        return None
    text = text.strip(_SPACE)
    if _CONTROL.search(text) is not None:
        return None
    if _PLAIN.fullmatch(text) is not None and len(_DIGIT.findall(text)) <= EXACT_DIGITS:
        return float(text)
    if _DIGIT.search(text) is None:
        return _INFINITE.get(text.lower(), np.nan)
    if _NOT_NUMERIC.search(text) is not None:
        return np.nan
    return None


def parse_iso_times(texts: list[str]) -> np.ndarray | None:
    """Epoch milliseconds (floored) of ISO 8601 time stamps of one layout, or None (use pandas).

    What ``pd.to_datetime(text.strip(), utc=True, format="ISO8601")`` gives: a stamp without a zone is
    UTC, one with an offset is converted to UTC.
    """
    stripped = [t.strip(_SPACE) for t in texts]
    if not stripped:
        return None
    first = _ISO.fullmatch(stripped[0])
    if first is None:
        return None
    arr = np.array(stripped, dtype=str)
    n, width = len(arr), arr.dtype.itemsize // 4
    if width != len(stripped[0]):
        return None
    codes = arr.view(np.uint32).reshape(n, width)

    def number(start: int, end: int) -> np.ndarray:
        digits = codes[:, start:end].astype(np.int64) - _ZERO
        return digits @ (10 ** np.arange(end - start - 1, -1, -1, dtype=np.int64))

    # every stamp must have the first one's layout: digits where it has digits, its separators elsewhere
    spans = {g: first.span(g) for g in range(1, 9) if first.group(g) is not None}
    digit_pos = np.zeros(width, dtype=bool)
    for g, (start, end) in spans.items():
        if g < 8:
            digit_pos[start:end] = True
    zone = spans.get(8)
    offset = np.zeros(n, dtype=np.int64)
    if zone is not None and first.group(8) != "Z":
        start, end = zone
        digit_pos[start + 1 : end] = True
        digit_pos[start + 3] = first.group(8)[3] != ":"
        sign = codes[:, start]
        if not np.isin(sign, (_PLUS, _MINUS)).all():
            return None
        hh = number(start + 1, start + 3)
        mm = number(end - 2, end)
        if (hh > 23).any() or (mm > 59).any():
            return None
        offset = np.where(sign == _MINUS, -1, 1) * (hh * 60 + mm) * 60_000
    literal = ~digit_pos
    if zone is not None and first.group(8) != "Z":
        literal[zone[0]] = False
    if not ((codes[:, digit_pos] - _ZERO) <= (_NINE - _ZERO)).all():
        return None
    if not (codes[:, literal] == codes[0, literal]).all():
        return None
    year, month, day = number(*spans[1]), number(*spans[2]), number(*spans[3])
    hour = number(*spans[4]) if 4 in spans else 0
    minute = number(*spans[5]) if 5 in spans else 0
    second = number(*spans[6]) if 6 in spans else 0
    if 7 in spans:
        start, end = spans[7]
        millis = number(start, end) * 10 ** (9 - (end - start)) // 1_000_000
    else:
        millis = 0
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(month - 1, 0, 11)]
    in_range = (
        (year >= 1678)
        & (year <= 2261)
        & (month >= 1)
        & (month <= 12)
        & (day >= 1)
        & (day <= month_days + (leap & (month == 2)))
        & (np.asarray(hour) <= 23)
        & (np.asarray(minute) <= 59)
        & (np.asarray(second) <= 59)
    )
    if not in_range.all():
        return None
    seconds = _days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
    return seconds * 1000 + millis - offset


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def write_scores(path: Path | str, times: list[str], score: np.ndarray, anomaly: np.ndarray) -> None:
    """``timestamp,score,anomaly`` as ``DataFrame.to_csv(index=False)`` writes them (same bytes)."""
    # pandas writes a float column with numpy's shortest repr (str of float64) and NaN as an empty field
    text = score.astype(str)
    text[np.isnan(score)] = ""
    rows = zip(times, text.tolist(), np.array(["0", "1"])[anomaly].tolist(), strict=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write("timestamp,score,anomaly\n")
        if _QUOTED.search("".join(times)) is None:
            # nothing to quote (the usual case): joined lines, three times faster than the csv module
            fh.writelines(f"{line}\n" for line in map(",".join, rows))
        else:
            csv.writer(fh, lineterminator="\n").writerows(rows)
