import { useEffect, useMemo, useState } from "react";
import type uPlot from "uplot";
import { query } from "../api";
import { useApi, useInterval, useLive } from "../hooks";
import { getNetwork } from "../lib/cache";
import { periodOf } from "../lib/periods";
import { formatMoney, formatNumber, formatPercent, formatTime, humanize } from "../lib/format";
import { mergeZone } from "../lib/live";
import { Chart } from "../components/Chart";
import { TrendChart } from "../components/TrendChart";
import { PeriodPicker } from "../components/PeriodPicker";
import { Empty, Loading, Section, StatusBadge } from "../components/ui";
import { Link } from "../router";
import type { Episode, LossDay, Network, RiskPoint, Series, ZoneDetail } from "../types";

export function ZoneScreen({ zone }: { zone: string }) {
  const { live } = useLive();
  const [since, setSince] = useState("24h");
  const period = periodOf(since);
  const z = encodeURIComponent(zone);
  const detail = useApi<ZoneDetail>(`/api/zones/${z}`, live.alertVersion);
  useInterval(detail.reload, 15_000);
  const [network, setNetwork] = useState<Network | null>(null);
  useEffect(() => {
    getNetwork().then(setNetwork).catch(() => setNetwork(null));
  }, []);

  const metrics = useMemo(() => {
    if (detail.data?.metrics?.length) return detail.data.metrics;
    const nz = network?.sites.flatMap((s) => s.zones).find((x) => x.id === zone);
    return [...new Set(nz?.sensors.flatMap((s) => s.metrics) ?? [])];
  }, [detail.data, network, zone]);
  const [metric, setMetric] = useState<string>("");
  const chosen = metric || metrics[0] || "";

  const series = useApi<Series>(chosen ? `/api/zones/${z}/series${query({ metric: chosen, since, step: period.step })}` : null);
  const episodes = useApi<{ items: Episode[] }>(`/api/history/episodes${query({ zone, since, limit: 200 })}`, live.alertVersion);
  const risk = useApi<{ points: RiskPoint[] }>(`/api/zones/${z}/risk${query({ since })}`);
  const losses = useApi<{ days: LossDay[] }>(`/api/zones/${z}/losses${query({ since: "30d" })}`);

  const anomalyTimes = useMemo(() => (episodes.data?.items ?? []).map((e) => e.start_ts), [episodes.data]);
  const d = detail.data ? mergeZone({ ...detail.data, probability: detail.data.risk?.probability ?? null, incident_type: detail.data.risk?.incident_type ?? null }, live.zones[zone]) : null;

  return (
    <div className="screen" data-screen="zone">
      <p className="crumbs">
        <Link to="/">Overview</Link> › {detail.data?.site ?? "…"} › {zone}
      </p>
      <h1>
        Zone {zone} {d ? <StatusBadge status={d.status} /> : null}
      </h1>
      <Loading error={detail.error} loading={detail.loading && !detail.data} />
      {d ? (
        <p className="lead">
          {humanize(d.utility)} zone of {d.site}. Risk of an incident: <strong>{formatPercent(d.probability)}</strong>
          {d.incident_type && d.incident_type !== "normal" ? <> — most likely <strong>{humanize(d.incident_type)}</strong></> : null}
          {detail.data?.risk?.ts ? <span className="muted"> (as of {formatTime(detail.data.risk.ts)} UTC)</span> : null}
        </p>
      ) : null}
      <Section
        title="Trend"
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
        <p className="muted small">Blue: the zone's value; green: the forecaster's expected value and its 10–90 % band; red dots: anomaly episodes starting.</p>
      </Section>
      <div className="two-col">
        <Section title="Risk over time">
          <RiskChart points={risk.data?.points ?? []} />
          <Loading error={risk.error} loading={risk.loading && !risk.data} />
        </Section>
        <Section title="Estimated losses (30 days)">
          <Losses days={losses.data?.days ?? []} />
          <Loading error={losses.error} loading={losses.loading && !losses.data} />
        </Section>
      </div>
      <Section title="Sensors">
        {detail.data?.sensors.length ? (
          <div className="scroll-x">
            <table className="table">
              <thead>
                <tr>
                  <th>sensor</th>
                  <th>asset</th>
                  <th>latest values</th>
                  <th>score</th>
                  <th>state</th>
                </tr>
              </thead>
              <tbody>
                {detail.data.sensors.map((s) => (
                  <tr key={s.id} className={s.anomalous ? "row-alert" : ""}>
                    <td>
                      <Link to={`/sensors/${encodeURIComponent(s.id)}`}>{s.id}</Link>
                    </td>
                    <td>{s.asset}</td>
                    <td className="small">
                      {Object.entries(s.latest ?? {})
                        .map(([k, v]) => `${k} ${formatNumber(v, 2)}`)
                        .join(" · ") || "—"}
                    </td>
                    <td>{formatNumber(s.score, 2)}</td>
                    <td>{s.anomalous ? <StatusBadge status="anomalous" /> : <StatusBadge status="normal" />}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <Empty>No sensors reported.</Empty>
        )}
      </Section>
    </div>
  );
}

const RISK_SERIES: uPlot.Series[] = [{ label: "probability", stroke: "#c62828", width: 1.5, fill: "rgba(198,40,40,0.1)" }];

function RiskChart({ points }: { points: RiskPoint[] }) {
  const data = useMemo(() => [points.map((p) => p.ts / 1000), points.map((p) => p.probability)] as uPlot.AlignedData, [points]);
  if (points.length === 0) return <Empty>No risk estimates in this period.</Empty>;
  const changes = points.filter((p, i) => i === 0 || p.incident_type !== points[i - 1]?.incident_type).slice(-6);
  return (
    <>
      <Chart data={data} series={RISK_SERIES} height={160} yRange={[0, 1]} yLabel="probability" ariaLabel="risk probability over time" />
      <ul className="small">
        {changes.map((c) => (
          <li key={c.ts}>
            {formatTime(c.ts)}: {humanize(c.incident_type)} ({formatPercent(c.probability)})
          </li>
        ))}
      </ul>
    </>
  );
}

function Losses({ days }: { days: LossDay[] }) {
  if (days.length === 0) return <Empty>No estimated losses.</Empty>;
  const volume = days.reduce((a, d) => a + (d.volume ?? 0), 0);
  const cost = days.reduce((a, d) => a + (d.cost ?? 0), 0);
  const unit = days.find((d) => d.unit)?.unit ?? "";
  const currency = days.find((d) => d.currency)?.currency ?? "";
  return (
    <table className="table">
      <thead>
        <tr>
          <th>day</th>
          <th>volume</th>
          <th>cost</th>
        </tr>
      </thead>
      <tbody>
        {days.slice(-10).map((d) => (
          <tr key={d.day}>
            <td>{d.day}</td>
            <td>
              {formatNumber(d.volume)} {d.unit}
            </td>
            <td>{formatMoney(d.cost, d.currency ?? "")}</td>
          </tr>
        ))}
      </tbody>
      <tfoot>
        <tr>
          <th>total</th>
          <th>
            {formatNumber(volume)} {unit}
          </th>
          <th>{formatMoney(cost, currency)}</th>
        </tr>
      </tfoot>
    </table>
  );
}
