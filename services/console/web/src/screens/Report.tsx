import { useState } from "react";
import { query } from "../api";
import { useApi } from "../hooks";
import { trendValues } from "../lib/chartdata";
import { formatMoney, formatNumber, formatPercent, formatTime } from "../lib/format";
import { Empty, Loading, Section, Spark } from "../components/ui";
import { Link } from "../router";
import type { PlannersReport } from "../types";

function isoDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

export function Report() {
  const [from, setFrom] = useState(() => isoDay(Date.now() - 30 * 86_400_000));
  const [to, setTo] = useState(() => isoDay(Date.now() + 86_400_000));
  const params = query({ from: `${from}T00:00:00Z`, to: `${to}T00:00:00Z` });
  const report = useApi<PlannersReport>(`/api/report${params}`);
  const zones = report.data?.zones ?? [];
  return (
    <div className="screen report" data-screen="report">
      <h1>Planners' report</h1>
      <div className="filters no-print">
        <label className="inline">
          From <input type="date" value={from} onChange={(e) => setFrom(e.target.value)} />
        </label>
        <label className="inline">
          To <input type="date" value={to} onChange={(e) => setTo(e.target.value)} />
        </label>
        <button onClick={() => window.print()}>Print</button>
        <a className="button" href={`/api/report.csv${params}`} download>
          CSV
        </a>
      </div>
      <p className="print-only">
        Period {formatTime(report.data?.from)} – {formatTime(report.data?.to)} UTC.
      </p>
      <Loading error={report.error} loading={report.loading && !report.data} />
      <Section title="Zones ranked by incidents, risk and estimated losses">
        {report.data && zones.length === 0 ? <Empty>No incidents or losses in this period.</Empty> : null}
        {zones.length ? (
          <div className="scroll-x">
            <table className="table" data-testid="report-table">
              <thead>
                <tr>
                  <th>#</th>
                  <th>zone</th>
                  <th>incidents</th>
                  <th>risk max / mean</th>
                  <th>est. loss</th>
                  <th>est. cost</th>
                  <th>incidents per day</th>
                  <th>loss per day</th>
                </tr>
              </thead>
              <tbody>
                {zones.map((z, i) => (
                  <tr key={`${z.site}/${z.zone}`}>
                    <td>{i + 1}</td>
                    <td>
                      <Link to={`/zones/${encodeURIComponent(z.zone)}`}>{z.zone}</Link> <span className="muted">{z.site}</span>
                    </td>
                    <td>{z.incidents}</td>
                    <td>
                      {formatPercent(z.risk_max)} / {formatPercent(z.risk_mean)}
                    </td>
                    <td>
                      {formatNumber(z.loss_volume)} {z.unit}
                    </td>
                    <td>{formatMoney(z.loss_cost, z.currency ?? "")}</td>
                    <td>
                      <Spark values={trendValues(z.trend, "incidents")} />
                    </td>
                    <td>
                      <Spark values={trendValues(z.trend, "loss_volume")} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
      </Section>
    </div>
  );
}
