/** How far a value is from the usual one, in standard deviations (null when unknown). */
export function deviation(value: number | undefined | null, usual: { mean: number | null; std: number | null } | undefined): number | null {
  if (value === undefined || value === null || !usual || usual.mean === null || !usual.std) return null;
  return (value - usual.mean) / usual.std;
}

/** Alerts ordered as an operator works them: firing before resolved, unacknowledged first, worst severity, newest. */
export function alertOrder<T extends { status: string; severity: string; ack: unknown; startsAt: string | number | null }>(
  items: T[],
  rank: (severity: string) => number,
  ms: (t: string | number | null) => number | null,
): T[] {
  return [...items].sort(
    (a, b) =>
      Number(b.status === "firing") - Number(a.status === "firing") ||
      Number(a.ack !== null) - Number(b.ack !== null) ||
      rank(b.severity) - rank(a.severity) ||
      (ms(b.startsAt) ?? 0) - (ms(a.startsAt) ?? 0),
  );
}
