// Turning API series into the column arrays uPlot draws: one shared x axis in seconds, null gaps.

import type { BandPoint, SeriesPoint } from "../types";

export interface TrendColumns {
  x: number[];
  mean: (number | null)[];
  q10: (number | null)[];
  q90: (number | null)[];
  expected: (number | null)[];
  anomalies: (number | null)[];
}

/** Align the series, the forecast band and anomaly times on one x axis (epoch seconds, ascending).
 *  An anomaly is drawn at the step that contains it, at that step's mean (its max if higher). */
export function trendColumns(
  points: SeriesPoint[],
  band: BandPoint[] = [],
  anomalyTimes: number[] = [],
  stepMs = 0,
): TrendColumns {
  const xs = new Set<number>();
  for (const p of points) xs.add(p.ts);
  for (const b of band) xs.add(b.ts);
  const x = [...xs].sort((a, b) => a - b);
  const index = new Map(x.map((t, i) => [t, i]));
  const n = x.length;
  const col = () => new Array<number | null>(n).fill(null);
  const out: TrendColumns = { x: x.map((t) => t / 1000), mean: col(), q10: col(), q90: col(), expected: col(), anomalies: col() };
  for (const p of points) {
    const i = index.get(p.ts);
    if (i !== undefined) out.mean[i] = p.mean;
  }
  for (const b of band) {
    const i = index.get(b.ts);
    if (i === undefined) continue;
    out.q10[i] = b.q10;
    out.q90[i] = b.q90;
    out.expected[i] = b.expected ?? b.q50;
  }
  for (const t of anomalyTimes) {
    const i = stepIndex(x, t, stepMs);
    if (i === null) continue;
    const p = points.find((q) => q.ts === x[i]);
    const y = p ? Math.max(p.mean ?? -Infinity, p.max ?? -Infinity) : out.mean[i];
    out.anomalies[i] = y !== undefined && y !== null && Number.isFinite(y) ? y : null;
  }
  return out;
}

/** The index of the step [x[i], x[i] + step) holding t; with no step, the nearest point. */
export function stepIndex(x: number[], t: number, stepMs: number): number | null {
  if (x.length === 0) return null;
  let lo = 0;
  let hi = x.length - 1;
  if (t < (x[0] ?? 0)) return null;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if ((x[mid] ?? 0) <= t) lo = mid;
    else hi = mid - 1;
  }
  const start = x[lo] ?? 0;
  if (stepMs > 0 && t >= start + stepMs) return null;
  return lo;
}

/** One field of a trend's daily points as numbers (missing → 0), e.g. incidents per day. */
export function trendValues<K extends string>(trend: readonly Partial<Record<K, unknown>>[] | null | undefined, key: K): number[] {
  if (!trend) return [];
  return trend.map((p) => {
    const v = p[key];
    return typeof v === "number" && Number.isFinite(v) ? v : 0;
  });
}

/** An SVG polyline path for a sparkline in a w × h box. */
export function sparkPath(values: readonly number[], w: number, h: number): string {
  if (values.length === 0) return "";
  const min = Math.min(...values);
  const max = Math.max(...values);
  const span = max - min || 1;
  const dx = values.length > 1 ? w / (values.length - 1) : 0;
  return values
    .map((v, i) => `${i === 0 ? "M" : "L"}${(i * dx).toFixed(1)},${(h - ((v - min) / span) * h).toFixed(1)}`)
    .join(" ");
}
