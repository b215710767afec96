// The periods offered by the screens' "since" pickers, with the chart step that keeps ~300 points.

export const PERIODS = [
  { value: "1h", label: "last hour", step: "1m", stepMs: 60_000 },
  { value: "6h", label: "6 hours", step: "1m", stepMs: 60_000 },
  { value: "24h", label: "24 hours", step: "5m", stepMs: 300_000 },
  { value: "7d", label: "7 days", step: "30m", stepMs: 1_800_000 },
  { value: "30d", label: "30 days", step: "2h", stepMs: 7_200_000 },
] as const;

export type Period = (typeof PERIODS)[number]["value"];

export function periodOf(value: string | null | undefined): (typeof PERIODS)[number] {
  return PERIODS.find((p) => p.value === value) ?? PERIODS[2];
}
