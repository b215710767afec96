import { rateColour } from "../lib/status";
import { formatPercent } from "../lib/format";
import type { RateRow } from "../types";

export interface HeatGrid {
  rows: string[];
  cols: number[];
  cells: Map<string, RateRow>;
  max: number;
}

/** Rows (site) × 24 hours from the anomaly-rate rows; the colour scale is relative to the worst cell. */
export function heatGrid(data: RateRow[], rowKey: "site" | "zone" = "site"): HeatGrid {
  const rows = [...new Set(data.map((r) => String(r[rowKey] ?? "")))].sort();
  const cells = new Map<string, RateRow>();
  let max = 0;
  for (const r of data) {
    cells.set(`${r[rowKey] ?? ""}|${r.hour ?? 0}`, r);
    max = Math.max(max, r.rate);
  }
  return { rows, cols: Array.from({ length: 24 }, (_, h) => h), cells, max };
}

export function Heatmap({ data }: { data: RateRow[] }) {
  const g = heatGrid(data);
  const cw = 26;
  const ch = 24;
  const left = 90;
  const top = 18;
  const width = left + g.cols.length * cw;
  const height = top + g.rows.length * ch;
  return (
    <div className="scroll-x">
      <svg className="heatmap" viewBox={`0 0 ${width} ${height}`} style={{ minWidth: 480, maxWidth: width * 1.4 }} role="img" aria-label="anomaly rate by site and hour of day (UTC)">
        {g.cols.map((h) => (
          <text key={h} x={left + h * cw + cw / 2} y={12} textAnchor="middle" className="axis">
            {h % 3 === 0 ? String(h).padStart(2, "0") : ""}
          </text>
        ))}
        {g.rows.map((row, i) => (
          <g key={row}>
            <text x={left - 6} y={top + i * ch + ch / 2 + 4} textAnchor="end" className="axis">
              {row}
            </text>
            {g.cols.map((h) => {
              const cell = g.cells.get(`${row}|${h}`);
              return (
                <rect key={h} x={left + h * cw} y={top + i * ch} width={cw - 2} height={ch - 2} fill={rateColour(cell?.rate, g.max)}>
                  <title>
                    {row} {String(h).padStart(2, "0")}:00 — {cell ? `${formatPercent(cell.rate, 2)} (${cell.anomalies}/${cell.readings})` : "no data"}
                  </title>
                </rect>
              );
            })}
          </g>
        ))}
      </svg>
    </div>
  );
}
