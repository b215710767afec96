import { useApi, useInterval } from "../hooks";
import { formatCompact, formatNumber, formatPercent } from "../lib/format";
import { LIGHT_COLOURS } from "../lib/status";
import { Empty, Loading, Section } from "../components/ui";
import type { Pipeline } from "../types";

function versions(v: Pipeline["services"][number]["model_versions"]): string {
  if (!v) return "—";
  if (Array.isArray(v)) return v.join(", ") || "—";
  return Object.entries(v)
    .map(([k, x]) => `${k} ${x}`)
    .join(", ") || "—";
}

export function PipelineScreen() {
  const p = useApi<Pipeline>("/api/pipeline");
  useInterval(p.reload, 5_000);
  const d = p.data;
  return (
    <div className="screen" data-screen="pipeline">
      <h1>Pipeline health</h1>
      <Loading error={p.error} loading={p.loading && !d} />
      {d ? (
        <>
          <div className="infra">
            {Object.entries(d.infra).map(([name, state]) => (
              <span key={name} className="pill" style={{ background: state === "up" ? LIGHT_COLOURS.green : LIGHT_COLOURS.red }}>
                {name} {state}
              </span>
            ))}
          </div>
          <Section title="Services">
            <div className="scroll-x">
              <table className="table">
                <thead>
                  <tr>
                    <th>service</th>
                    <th>up</th>
                    <th>throughput /s</th>
                    <th>consumer lag</th>
                    <th>batch p50 / p95</th>
                    <th>quarantined</th>
                    <th>models</th>
                  </tr>
                </thead>
                <tbody>
                  {d.services.map((s) => (
                    <tr key={s.name} className={s.up ? "" : "row-alert"}>
                      <td>{s.name}</td>
                      <td>{s.up ? "up" : "DOWN"}</td>
                      <td>{formatCompact(s.throughput_per_s)}</td>
                      <td>{formatCompact(s.lag)}</td>
                      <td>
                        {formatNumber(s.batch_p50_ms)} / {formatNumber(s.batch_p95_ms)} ms
                      </td>
                      <td>{formatPercent(s.quarantine_rate, 2)}</td>
                      <td className="small">{versions(s.model_versions)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </Section>
          <Section title="Top quarantine reasons">
            {d.quarantine_reasons.length ? (
              <table className="table">
                <tbody>
                  {d.quarantine_reasons.map((r) => (
                    <tr key={r.reason}>
                      <td>{r.reason}</td>
                      <td>{formatCompact(r.count)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            ) : (
              <Empty>Nothing quarantined.</Empty>
            )}
          </Section>
        </>
      ) : null}
    </div>
  );
}
