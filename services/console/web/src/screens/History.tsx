import { useEffect, useMemo, useState } from "react";
import { query } from "../api";
import { useApi, useLive } from "../hooks";
import { getNetwork } from "../lib/cache";
import { formatDuration, formatTime, humanize } from "../lib/format";
import { severityColour } from "../lib/status";
import { Heatmap } from "../components/Heatmap";
import { Schematic, type ZoneLook } from "../components/Schematic";
import { PeriodPicker } from "../components/PeriodPicker";
import { Empty, Loading, Section, SeverityBadge } from "../components/ui";
import { Link, useLocation } from "../router";
import type { AlertLogEntry, Episode, Network, Playback, RateRow } from "../types";

export function History() {
  const { search } = useLocation();
  const { live } = useLive();
  const [since, setSince] = useState("24h");
  const site = search.get("site") ?? "";
  const rates = useApi<{ rows: RateRow[] }>(`/api/history/anomaly-rates${query({ by: "site,hour", since: "7d", site })}`);
  const episodes = useApi<{ items: Episode[] }>(`/api/history/episodes${query({ since, site, limit: 200 })}`, live.alertVersion);

  return (
    <div className="screen" data-screen="history">
      <h1>History{site ? ` — ${site}` : ""}</h1>
      <Section title="Anomaly rate by site and hour of day (last 7 days, UTC)">
        <Loading error={rates.error} loading={rates.loading && !rates.data} />
        {rates.data ? rates.data.rows.length ? <Heatmap data={rates.data.rows} /> : <Empty>No readings in the last 7 days.</Empty> : null}
      </Section>
      <Section title="Episodes" actions={<PeriodPicker value={since} onChange={setSince} />}>
        <Loading error={episodes.error} loading={episodes.loading && !episodes.data} />
        {episodes.data ? <Timeline episodes={episodes.data.items} /> : null}
        {episodes.data ? <EpisodeTable episodes={episodes.data.items} /> : null}
      </Section>
      <AlertLog since={since} site={site} version={live.alertVersion} />
      <PlaybackPanel site={site} />
      <Section title="Exports">
        <ul className="exports">
          {(["anomalies", "episodes", "alerts", "reports", "quarantine"] as const).map((what) => (
            <li key={what}>
              <a href={`/api/history/export.csv${query({ what, since, site })}`} download>
                {what} (CSV, {since})
              </a>
            </li>
          ))}
        </ul>
      </Section>
    </div>
  );
}

/** One row per zone, a bar per episode across the period. */
function Timeline({ episodes }: { episodes: Episode[] }) {
  if (episodes.length === 0) return <Empty>No episodes in this period.</Empty>;
  const start = Math.min(...episodes.map((e) => e.start_ts));
  const end = Math.max(...episodes.map((e) => Math.max(e.end_ts, e.start_ts + 60_000)));
  const span = Math.max(end - start, 60_000);
  const rows = [...new Set(episodes.map((e) => e.zone))].sort();
  const left = 120;
  const width = 800;
  const rh = 18;
  const x = (t: number) => left + ((t - start) / span) * (width - left - 4);
  return (
    <div className="scroll-x">
      <svg className="timeline" viewBox={`0 0 ${width} ${rows.length * rh + 20}`} style={{ minWidth: 520 }} role="img" aria-label="episode timeline">
        {rows.map((zone, i) => (
          <text key={zone} x={left - 6} y={i * rh + 13} textAnchor="end" className="axis">
            {zone}
          </text>
        ))}
        {episodes.map((e) => (
          <rect
            key={e.id}
            x={x(e.start_ts)}
            y={rows.indexOf(e.zone) * rh + 2}
            width={Math.max(3, x(Math.max(e.end_ts, e.start_ts + 60_000)) - x(e.start_ts))}
            height={rh - 4}
            rx={2}
            fill={severityColour(e.severity)}
            opacity={e.ack_by ? 0.55 : 1}
          >
            <title>
              {e.sensor_id} {formatTime(e.start_ts)} – {formatTime(e.end_ts)} ({e.anomaly_count} anomalies)
            </title>
          </rect>
        ))}
        <text x={left} y={rows.length * rh + 16} className="axis">
          {formatTime(start)}
        </text>
        <text x={width - 4} y={rows.length * rh + 16} textAnchor="end" className="axis">
          {formatTime(end)} UTC
        </text>
      </svg>
    </div>
  );
}

function EpisodeTable({ episodes }: { episodes: Episode[] }) {
  if (episodes.length === 0) return null;
  return (
    <div className="scroll-x">
      <table className="table" data-testid="episodes">
        <thead>
          <tr>
            <th>started (UTC)</th>
            <th>sensor</th>
            <th>severity</th>
            <th>lasted</th>
            <th>state</th>
            <th>acknowledged</th>
            <th>verdict</th>
          </tr>
        </thead>
        <tbody>
          {episodes.slice(0, 50).map((e) => (
            <tr key={e.id} data-fingerprint={e.alert_fingerprint ?? ""}>
              <td>{formatTime(e.start_ts)}</td>
              <td>
                <Link to={`/sensors/${encodeURIComponent(e.sensor_id)}`}>{e.sensor_id}</Link>
              </td>
              <td>
                <SeverityBadge severity={e.severity} />
              </td>
              <td>{formatDuration(e.end_ts - e.start_ts)}</td>
              <td>{e.state}</td>
              <td className="ack-cell">{e.ack_by ? `${e.ack_by}: ${e.ack_note ?? ""}` : "—"}</td>
              <td>{e.verdict ? humanize(e.verdict) : "—"}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function PlaybackPanel({ site }: { site: string }) {
  const [since, setSince] = useState("6h");
  const step = since === "1h" || since === "6h" ? "5m" : since === "24h" ? "15m" : "2h";
  const data = useApi<Playback>(`/api/history/playback${query({ since, step, site })}`);
  const [network, setNetwork] = useState<Network | null>(null);
  // The frame picked on the slider, for the frames it was picked on; by default the latest frame.
  const [pick, setPick] = useState<{ frames: unknown; i: number } | null>(null);
  const [playing, setPlaying] = useState(false);
  useEffect(() => {
    getNetwork().then(setNetwork).catch(() => setNetwork(null));
  }, []);
  const frames = useMemo(() => data.data?.frames ?? [], [data.data]);
  const index = pick && pick.frames === frames ? pick.i : Math.max(0, frames.length - 1);
  const setIndex = (i: number) => setPick({ frames, i });
  useEffect(() => {
    if (!playing) return;
    const id = window.setInterval(() => {
      setPick((p) => {
        const i = p && p.frames === frames ? p.i : frames.length - 1;
        if (i >= frames.length - 1) {
          setPlaying(false);
          return p;
        }
        return { frames, i: i + 1 };
      });
    }, 400);
    return () => window.clearInterval(id);
  }, [playing, frames]);
  const frame = frames[index];
  const zones = useMemo(() => {
    const out: Record<string, ZoneLook> = {};
    for (const z of frame?.zones ?? []) out[z.zone] = z;
    return out;
  }, [frame]);
  const shown = network && site ? { sites: network.sites.filter((s) => s.id === site) } : network;
  return (
    <Section title="Playback" actions={<PeriodPicker value={since} onChange={setSince} />}>
      <Loading error={data.error} loading={data.loading && !data.data} />
      {frames.length ? (
        <>
          <div className="playback-controls">
            <button onClick={() => (playing ? setPlaying(false) : (setIndex(index >= frames.length - 1 ? 0 : index), setPlaying(true)))}>
              {playing ? "Pause" : "Play"}
            </button>
            <input
              type="range"
              min={0}
              max={frames.length - 1}
              value={index}
              onChange={(e) => setIndex(Number(e.target.value))}
              aria-label="time"
            />
            <output>{frame ? `${formatTime(frame.ts)} UTC` : ""}</output>
          </div>
          {shown ? <Schematic network={shown} zones={zones} /> : null}
        </>
      ) : data.data ? (
        <Empty>No recorded state in this period.</Empty>
      ) : null}
    </Section>
  );
}

const KIND_WORDS: Record<string, string> = {
  state: "state",
  ack: "acknowledged",
  comment: "comment",
  assign: "assigned",
  verdict: "verdict",
};

/** What happened to alerts: state changes and what people did (acknowledgements, comments, verdicts). */
function AlertLog({ since, site, version }: { since: string; site: string; version: number }) {
  const log = useApi<{ items: AlertLogEntry[] }>(`/api/history/alerts${query({ since, site, limit: 100 })}`, version);
  return (
    <Section title="Alert log">
      <Loading error={log.error} loading={log.loading && !log.data} />
      {log.data && log.data.items.length === 0 ? <Empty>Nothing happened to alerts in this period.</Empty> : null}
      {log.data && log.data.items.length ? (
        <div className="scroll-x">
          <table className="table" data-testid="alert-log">
            <thead>
              <tr>
                <th>when (UTC)</th>
                <th>what</th>
                <th>alert</th>
                <th>who</th>
                <th>note</th>
              </tr>
            </thead>
            <tbody>
              {log.data.items.map((e, i) => (
                <tr key={`${e.fingerprint}-${String(e.ts)}-${e.kind}-${i}`} data-fingerprint={e.fingerprint}>
                  <td>{formatTime(e.ts)}</td>
                  <td>{e.kind === "state" ? (e.status ?? "state") : (KIND_WORDS[e.kind] ?? e.kind)}</td>
                  <td className="small">
                    {e.labels?.alertname ?? ""} {[e.labels?.site, e.labels?.zone, e.labels?.sensor].filter(Boolean).join(" / ") || e.fingerprint.slice(0, 10)}
                  </td>
                  <td>{e.author ?? "—"}</td>
                  <td>{e.note ?? ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </Section>
  );
}
