// Colours for states: one table for the whole console, chosen to stay readable for colour-blind
// people (blue/orange/red rather than green/red only) and always paired with a word.

export type ZoneStatus = "normal" | "anomalous" | "at_risk" | "unknown";
export type Severity = "critical" | "warning" | "info";
export type Light = "green" | "amber" | "red";

export const STATUS_COLOURS: Record<ZoneStatus, string> = {
  normal: "#2e7d32",
  anomalous: "#ef8f00",
  at_risk: "#c62828",
  unknown: "#8a8f98",
};

export const SEVERITY_COLOURS: Record<Severity, string> = {
  critical: "#c62828",
  warning: "#ef8f00",
  info: "#1565c0",
};

export const LIGHT_COLOURS: Record<Light, string> = {
  green: "#2e7d32",
  amber: "#ef8f00",
  red: "#c62828",
};

const STATUS_RANK: Record<ZoneStatus, number> = { unknown: 0, normal: 1, anomalous: 2, at_risk: 3 };
const SEVERITY_RANK: Record<Severity, number> = { info: 1, warning: 2, critical: 3 };

export function asStatus(value: string | null | undefined): ZoneStatus {
  return value === "normal" || value === "anomalous" || value === "at_risk" ? value : "unknown";
}

export function asSeverity(value: string | null | undefined): Severity {
  return value === "critical" || value === "warning" ? value : "info";
}

export function statusColour(status: string | null | undefined): string {
  return STATUS_COLOURS[asStatus(status)];
}

export function severityColour(severity: string | null | undefined): string {
  return SEVERITY_COLOURS[asSeverity(severity)];
}

export function lightColour(light: string | null | undefined): string {
  return light === "red" || light === "amber" || light === "green" ? LIGHT_COLOURS[light] : STATUS_COLOURS.unknown;
}

export function statusLabel(status: string | null | undefined): string {
  switch (asStatus(status)) {
    case "normal":
      return "normal";
    case "anomalous":
      return "anomalous";
    case "at_risk":
      return "at risk";
    default:
      return "no data";
  }
}

/** The worst of several statuses: a site is as bad as its worst zone. */
export function worstStatus(statuses: Iterable<string | null | undefined>): ZoneStatus {
  let worst: ZoneStatus = "unknown";
  for (const s of statuses) {
    const st = asStatus(s);
    if (STATUS_RANK[st] > STATUS_RANK[worst]) worst = st;
  }
  return worst;
}

/** Sort key: critical first, then warning, then info. */
export function severityRank(severity: string | null | undefined): number {
  return SEVERITY_RANK[asSeverity(severity)];
}

/** A cell colour for a rate 0..1 on a white → orange → red ramp (heatmaps); grey when no data. */
export function rateColour(rate: number | null | undefined, max = 1): string {
  if (rate === null || rate === undefined || !Number.isFinite(rate) || max <= 0) return "#e6e8eb";
  const t = Math.max(0, Math.min(1, rate / max));
  // Two linear segments: (255,247,236) → (239,143,0) → (198,40,40)
  const lerp = (a: number, b: number, u: number) => Math.round(a + (b - a) * u);
  const [r, g, b] =
    t < 0.5
      ? [lerp(255, 239, t * 2), lerp(247, 143, t * 2), lerp(236, 0, t * 2)]
      : [lerp(239, 198, (t - 0.5) * 2), lerp(143, 40, (t - 0.5) * 2), lerp(0, 40, (t - 0.5) * 2)];
  return `rgb(${r}, ${g}, ${b})`;
}
