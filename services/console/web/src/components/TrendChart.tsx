import { useMemo } from "react";
import type uPlot from "uplot";
import { Chart } from "./Chart";
import { trendColumns } from "../lib/chartdata";
import { SEVERITY_COLOURS } from "../lib/status";
import type { Series } from "../types";

const SERIES: uPlot.Series[] = [
  { label: "value", stroke: "#1565c0", width: 1.5, spanGaps: false },
  { label: "forecast q10", stroke: "rgba(46,125,50,0.5)", width: 1, dash: [4, 4] },
  { label: "forecast q90", stroke: "rgba(46,125,50,0.5)", width: 1, dash: [4, 4] },
  { label: "expected", stroke: "#2e7d32", width: 1 },
  {
    label: "anomaly",
    stroke: SEVERITY_COLOURS.critical,
    width: 0,
    points: { show: true, size: 9, fill: SEVERITY_COLOURS.critical, stroke: SEVERITY_COLOURS.critical },
    paths: () => null,
  },
];

const BANDS: uPlot.Band[] = [{ series: [3, 2], fill: "rgba(46,125,50,0.12)" }];

/** A metric over time with the forecaster's q10–q90 band and the anomalies marked. */
export function TrendChart({ series, anomalyTimes, stepMs, label }: { series: Series; anomalyTimes: number[]; stepMs: number; label: string }) {
  const data = useMemo(() => {
    const c = trendColumns(series.points, series.band ?? [], anomalyTimes, stepMs);
    return [c.x, c.mean, c.q10, c.q90, c.expected, c.anomalies] as uPlot.AlignedData;
  }, [series, anomalyTimes, stepMs]);
  if (series.points.length === 0 && (series.band ?? []).length === 0) return <p className="muted">No data for {label} in this period.</p>;
  return <Chart data={data} series={SERIES} bands={BANDS} yLabel={label} ariaLabel={`${label} over time with forecast band`} />;
}
