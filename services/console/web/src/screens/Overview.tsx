import { useEffect, useMemo, useState } from "react";
import { useApi, useInterval, useLive } from "../hooks";
import { getNetwork } from "../lib/cache";
import { mergeZone } from "../lib/live";
import { formatCompact, formatMoney, formatNumber, formatPercent, formatClock, humanize } from "../lib/format";
import { SEVERITY_COLOURS, STATUS_COLOURS, statusLabel } from "../lib/status";
import { Schematic, type ZoneLook } from "../components/Schematic";
import { Kpi, Loading, Section, StatusBadge, Empty } from "../components/ui";
import { Link } from "../router";
import type { Network, Overview as OverviewData } from "../types";

export function Overview() {
  const { live } = useLive();
  const overview = useApi<OverviewData>("/api/overview", live.alertVersion);
  const [network, setNetwork] = useState<Network | null>(null);
  const [netError, setNetError] = useState<string | null>(null);
  useEffect(() => {
    getNetwork()
      .then(setNetwork)
      .catch((e: unknown) => setNetError(String(e)));
  }, []);
  useInterval(overview.reload, 15_000);

  const zones = useMemo(() => {
    const out: Record<string, ZoneLook & { site: string; utility: string }> = {};
    for (const z of overview.data?.zones ?? []) out[z.zone] = mergeZone(z, live.zones[z.zone]);
    return out;
  }, [overview.data, live.zones]);

  const k = overview.data?.kpis;
  const risky = Object.entries(zones)
    .filter(([, z]) => z.status !== "normal" && z.status !== "unknown")
    .sort((a, b) => (b[1].probability ?? 0) - (a[1].probability ?? 0));

  return (
    <div className="screen" data-screen="overview">
      <h1>Overview</h1>
      <Loading error={overview.error ?? netError} loading={overview.loading && !overview.data} />
      {k ? (
        <div className="kpis" data-testid="kpis">
          <Kpi label="readings / s" value={formatCompact(k.readings_per_s)} />
          <Kpi label="anomalies, last hour" value={formatCompact(k.anomalies_last_hour)} tone={STATUS_COLOURS.anomalous} />
          <Kpi
            label="firing alerts"
            value={
              <span>
                <span style={{ color: SEVERITY_COLOURS.critical }}>{k.firing.critical}</span> /{" "}
                <span style={{ color: SEVERITY_COLOURS.warning }}>{k.firing.warning}</span> /{" "}
                <span style={{ color: SEVERITY_COLOURS.info }}>{k.firing.info}</span>
              </span>
            }
            hint="critical / warning / info"
            tone={k.firing.critical ? SEVERITY_COLOURS.critical : undefined}
          />
          <Kpi label="zones at risk" value={formatNumber(k.zones_at_risk, 0)} tone={k.zones_at_risk ? STATUS_COLOURS.at_risk : undefined} />
          <Kpi
            label="estimated loss today"
            value={`${formatNumber(k.loss_today.volume, 1)} ${k.loss_today.unit}`}
            hint={formatMoney(k.loss_today.cost, k.loss_today.currency)}
          />
        </div>
      ) : null}
      <Section
        title="Network"
        actions={
          <span className="legend">
            {(["normal", "anomalous", "at_risk", "unknown"] as const).map((s) => (
              <span key={s}>
                <i style={{ background: STATUS_COLOURS[s] }} /> {statusLabel(s)}
              </span>
            ))}
          </span>
        }
      >
        {network ? <Schematic network={network} zones={zones} /> : <p className="muted">Loading the network…</p>}
      </Section>
      <div className="two-col">
        <Section title="Zones needing attention">
          {risky.length === 0 ? (
            <Empty>All zones normal.</Empty>
          ) : (
            <table className="table">
              <thead>
                <tr>
                  <th>zone</th>
                  <th>status</th>
                  <th>risk</th>
                </tr>
              </thead>
              <tbody>
                {risky.slice(0, 12).map(([id, z]) => (
                  <tr key={id}>
                    <td>
                      <Link to={`/zones/${encodeURIComponent(id)}`}>{id}</Link>
                    </td>
                    <td>
                      <StatusBadge status={z.status} />
                    </td>
                    <td>
                      {formatPercent(z.probability)} {z.incident_type && z.incident_type !== "normal" ? humanize(z.incident_type) : ""}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </Section>
        <Section title="Live anomalies">
          {live.anomalies.length === 0 ? (
            <Empty>{live.connected ? "None since you opened the console." : "Live feed not connected."}</Empty>
          ) : (
            <ul className="feed">
              {live.anomalies.slice(0, 12).map((a) => (
                <li key={`${a.sensor_id}-${a.ts}`}>
                  <span className="muted">{formatClock(a.ts)}</span> <Link to={`/sensors/${encodeURIComponent(a.sensor_id)}`}>{a.sensor_id}</Link>{" "}
                  score {formatNumber(a.score, 2)} <span className="muted">({a.severity})</span>
                </li>
              ))}
            </ul>
          )}
        </Section>
      </div>
    </div>
  );
}
