// Formatting of numbers, times and durations for people: fixed rules so every screen reads the same.

const DASH = "—";

/** A number with at most `digits` decimals and thin grouping; a dash for missing values. */
export function formatNumber(value: number | null | undefined, digits = 1): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  const abs = Math.abs(value);
  const d = abs >= 1000 ? 0 : abs >= 100 ? Math.min(digits, 1) : digits;
  return value.toLocaleString("en-GB", { maximumFractionDigits: d, minimumFractionDigits: 0 });
}

/** Large counts shortened: 1234 → "1.2k", 2_500_000 → "2.5M". */
export function formatCompact(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  const abs = Math.abs(value);
  if (abs >= 1e9) return `${trim(value / 1e9)}G`;
  if (abs >= 1e6) return `${trim(value / 1e6)}M`;
  if (abs >= 1e3) return `${trim(value / 1e3)}k`;
  return formatNumber(value, abs < 10 ? 2 : 1);
}

function trim(v: number): string {
  return v.toFixed(1).replace(/\.0$/, "");
}

/** A probability (0..1) as a whole percent: 0.734 → "73 %". */
export function formatPercent(p: number | null | undefined, digits = 0): string {
  if (p === null || p === undefined || !Number.isFinite(p)) return DASH;
  return `${(p * 100).toFixed(digits)} %`;
}

/** Money with its currency code, no decimals above 100: (1234.5, "EUR") → "1,235 EUR". */
export function formatMoney(amount: number | null | undefined, currency = ""): string {
  if (amount === null || amount === undefined || !Number.isFinite(amount)) return DASH;
  const text = amount.toLocaleString("en-GB", { maximumFractionDigits: Math.abs(amount) >= 100 ? 0 : 2 });
  return currency ? `${text} ${currency}` : text;
}

/** Epoch milliseconds (or an ISO string) as "2026-12-04 21:05:09" in UTC; the console speaks UTC. */
export function formatTime(ts: number | string | null | undefined): string {
  const ms = toMs(ts);
  if (ms === null) return DASH;
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

/** Only the clock part, "21:05". */
export function formatClock(ts: number | string | null | undefined): string {
  const ms = toMs(ts);
  if (ms === null) return DASH;
  return new Date(ms).toISOString().slice(11, 16);
}

export function toMs(ts: number | string | null | undefined): number | null {
  if (ts === null || ts === undefined || ts === "") return null;
  if (typeof ts === "number") return Number.isFinite(ts) && ts > 0 ? ts : null;
  if (/^\d+$/.test(ts)) return Number(ts);
  const ms = Date.parse(ts);
  // Alertmanager writes the zero time for "not ended".
  return Number.isNaN(ms) || ms <= 0 ? null : ms;
}

/** A duration in milliseconds as the two largest units: 3_723_000 → "1 h 2 min". */
export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms) || ms < 0) return DASH;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  const units: [number, string][] = [
    [86_400, "d"],
    [3_600, "h"],
    [60, "min"],
    [1, "s"],
  ];
  const parts: string[] = [];
  let rest = s;
  for (const [size, name] of units) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)} ${name}`);
      rest %= size;
    }
    if (parts.length === 2) break;
  }
  return parts.join(" ");
}

/** "5 min ago" style age of a timestamp relative to `now`. */
export function formatAgo(ts: number | string | null | undefined, now: number = Date.now()): string {
  const ms = toMs(ts);
  if (ms === null) return DASH;
  const diff = now - ms;
  if (diff < 0) return "just now";
  if (diff < 10_000) return "just now";
  return `${formatDuration(diff)} ago`;
}

/** Words from identifiers: "pipe_burst" → "pipe burst", "at_risk" → "at risk". */
export function humanize(id: string | null | undefined): string {
  if (!id) return DASH;
  return id.replace(/[_-]+/g, " ").trim();
}
