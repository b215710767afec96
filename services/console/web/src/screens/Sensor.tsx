import { useMemo, useState } from "react";
import { query } from "../api";
import { useApi, useInterval } from "../hooks";
import { periodOf } from "../lib/periods";
import { formatDuration, formatNumber, formatTime, humanize } from "../lib/format";
import { TrendChart } from "../components/TrendChart";
import { PeriodPicker } from "../components/PeriodPicker";
import { Empty, Loading, Section, SeverityBadge, StatusBadge } from "../components/ui";
import { Link } from "../router";
import { deviation } from "../lib/stats";
import type { SensorDetail, Series } from "../types";

export function SensorScreen({ id }: { id: string }) {
  const enc = encodeURIComponent(id);
  const detail = useApi<SensorDetail>(`/api/sensors/${enc}`);
  useInterval(detail.reload, 15_000);
  const [since, setSince] = useState("24h");
  const period = periodOf(since);
  const metrics = useMemo(() => {
    const d = detail.data;
    if (!d) return [];
    return d.metrics?.length ? d.metrics : [...new Set([...Object.keys(d.latest ?? {}), ...Object.keys(d.usual ?? {})])];
  }, [detail.data]);
  const [metric, setMetric] = useState("");
  const chosen = metric || metrics[0] || "";
  const series = useApi<Series>(chosen ? `/api/sensors/${enc}/series${query({ metric: chosen, since, step: period.step })}` : null);
  const d = detail.data;
  const anomalyTimes = useMemo(() => (d?.episodes ?? []).map((e) => e.start_ts), [d]);

  return (
    <div className="screen" data-screen="sensor">
      <p className="crumbs">
        <Link to="/">Overview</Link> › {d ? <Link to={`/zones/${encodeURIComponent(d.zone)}`}>{d.zone}</Link> : "…"} › {id}
      </p>
      <h1>Sensor {id}</h1>
      <Loading error={detail.error} loading={detail.loading && !d} />
      {d ? (
        <>
          <p className="lead">
            {humanize(d.asset)} in {d.zone} ({d.site}). Anomaly score <strong>{formatNumber(d.score, 2)}</strong>
            {d.threshold !== undefined && d.threshold !== null ? <> against a threshold of {formatNumber(d.threshold, 2)}</> : null}{" "}
            <StatusBadge status={d.threshold !== undefined && d.threshold !== null && d.score !== null && d.score >= d.threshold ? "anomalous" : "normal"} />
          </p>
          <Section title="Why it looks that way">
            {d.reasons.length ? (
              <ul className="reasons">
                {d.reasons.map((r, i) => (
                  <li key={i}>{r}</li>
                ))}
              </ul>
            ) : (
              <Empty>Nothing unusual to explain.</Empty>
            )}
          </Section>
          <Section
            title="Values over time"
            actions={
              <>
                <label className="inline">
                  Metric{" "}
                  <select value={chosen} onChange={(e) => setMetric(e.target.value)}>
                    {metrics.map((m) => (
                      <option key={m}>{m}</option>
                    ))}
                  </select>
                </label>
                <PeriodPicker value={since} onChange={setSince} />
              </>
            }
          >
            <Loading error={series.error} loading={series.loading && !series.data} />
            {series.data ? <TrendChart series={series.data} anomalyTimes={anomalyTimes} stepMs={period.stepMs} label={chosen} /> : null}
          </Section>
          <div className="two-col">
            <Section title="What is usual for it">
              <table className="table">
                <thead>
                  <tr>
                    <th>metric</th>
                    <th>latest</th>
                    <th>usual (mean ± sd)</th>
                    <th>off by</th>
                  </tr>
                </thead>
                <tbody>
                  {metrics.map((m) => {
                    const u = d.usual?.[m];
                    const dev = deviation(d.latest?.[m], u);
                    return (
                      <tr key={m} className={dev !== null && Math.abs(dev) >= 3 ? "row-alert" : ""}>
                        <td>{m}</td>
                        <td>{formatNumber(d.latest?.[m], 2)}</td>
                        <td>
                          {formatNumber(u?.mean, 2)} ± {formatNumber(u?.std, 2)}
                        </td>
                        <td>{dev === null ? "—" : `${dev >= 0 ? "+" : ""}${formatNumber(dev, 1)} sd`}</td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            </Section>
            <Section title="Episodes">
              {d.episodes.length ? (
                <table className="table">
                  <thead>
                    <tr>
                      <th>started</th>
                      <th>lasted</th>
                      <th>severity</th>
                      <th>acknowledged</th>
                    </tr>
                  </thead>
                  <tbody>
                    {d.episodes.slice(0, 20).map((e) => (
                      <tr key={e.id}>
                        <td>{formatTime(e.start_ts)}</td>
                        <td>{formatDuration(e.end_ts - e.start_ts)}</td>
                        <td>
                          <SeverityBadge severity={e.severity} />
                        </td>
                        <td>{e.ack_by ? `${e.ack_by}: ${e.ack_note ?? ""}` : "—"}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              ) : (
                <Empty>No episodes.</Empty>
              )}
            </Section>
          </div>
        </>
      ) : null}
    </div>
  );
}
