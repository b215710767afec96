import { describe, expect, it } from "vitest";
import { formatAgo, formatClock, formatCompact, formatDuration, formatMoney, formatNumber, formatPercent, formatTime, humanize, toMs } from "./format";

describe("formatters", () => {
  it("writes numbers with grouping and a dash for missing values", () => {
    expect(formatNumber(1234.567)).toBe("1,235");
    expect(formatNumber(12.345, 2)).toBe("12.35");
    expect(formatNumber(null)).toBe("—");
    expect(formatNumber(Number.NaN)).toBe("—");
  });
  it("shortens large counts", () => {
    expect(formatCompact(999)).toBe("999");
    expect(formatCompact(1234)).toBe("1.2k");
    expect(formatCompact(2_000_000)).toBe("2M");
    expect(formatCompact(3.14159)).toBe("3.14");
  });
  it("writes probabilities as percent", () => {
    expect(formatPercent(0.734)).toBe("73 %");
    expect(formatPercent(0.00123, 2)).toBe("0.12 %");
    expect(formatPercent(undefined)).toBe("—");
  });
  it("writes money with the currency", () => {
    expect(formatMoney(1234.5, "EUR")).toBe("1,235 EUR");
    expect(formatMoney(12.345, "EUR")).toBe("12.35 EUR");
    expect(formatMoney(null, "EUR")).toBe("—");
  });
  it("writes times in UTC from ms, digit strings and ISO", () => {
    expect(formatTime(Date.UTC(2026, 11, 4, 21, 5, 9))).toBe("2026-12-04 21:05:09");
    expect(formatTime(String(Date.UTC(2026, 0, 1)))).toBe("2026-01-01 00:00:00");
    expect(formatTime("2026-12-04T10:00:00+02:00")).toBe("2026-12-04 08:00:00");
    expect(formatClock(Date.UTC(2026, 11, 4, 7, 3))).toBe("07:03");
  });
  it("treats the zero time and junk as missing", () => {
    expect(toMs("0001-01-01T00:00:00Z")).toBeNull();
    expect(toMs("not a time")).toBeNull();
    expect(toMs(0)).toBeNull();
    expect(formatTime(null)).toBe("—");
  });
  it("writes durations as the two largest units", () => {
    expect(formatDuration(42_000)).toBe("42 s");
    expect(formatDuration(3_723_000)).toBe("1 h 2 min");
    expect(formatDuration(90_061_000)).toBe("1 d 1 h");
    expect(formatDuration(-1)).toBe("—");
  });
  it("writes ages relative to now", () => {
    const now = Date.UTC(2026, 11, 4, 12);
    expect(formatAgo(now - 5 * 60_000, now)).toBe("5 min ago");
    expect(formatAgo(now - 3000, now)).toBe("just now");
    expect(formatAgo(now + 60_000, now)).toBe("just now");
  });
  it("turns identifiers into words", () => {
    expect(humanize("pipe_burst")).toBe("pipe burst");
    expect(humanize("at_risk")).toBe("at risk");
    expect(humanize(null)).toBe("—");
  });
});
