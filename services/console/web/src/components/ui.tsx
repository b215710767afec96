import type { ReactNode } from "react";
import { severityColour, statusColour, statusLabel, lightColour } from "../lib/status";
import { sparkPath } from "../lib/chartdata";

export function Kpi({ label, value, hint, tone }: { label: string; value: ReactNode; hint?: ReactNode; tone?: string }) {
  return (
    <div className="kpi" style={tone ? { borderTopColor: tone } : undefined}>
      <div className="kpi-value">{value}</div>
      <div className="kpi-label">{label}</div>
      {hint ? <div className="kpi-hint">{hint}</div> : null}
    </div>
  );
}

export function StatusBadge({ status }: { status: string | null | undefined }) {
  return (
    <span className="badge" style={{ background: statusColour(status) }} data-status={status ?? "unknown"}>
      {statusLabel(status)}
    </span>
  );
}

export function SeverityBadge({ severity }: { severity: string | null | undefined }) {
  return (
    <span className="badge" style={{ background: severityColour(severity) }}>
      {severity ?? "info"}
    </span>
  );
}

export function Light({ light }: { light: string }) {
  return <span className="light" style={{ background: lightColour(light) }} aria-hidden="true" />;
}

export function Spark({ values, width = 100, height = 24 }: { values: number[]; width?: number; height?: number }) {
  if (values.length < 2) return <span className="muted">—</span>;
  return (
    <svg className="spark" width={width} height={height} viewBox={`-1 -1 ${width + 2} ${height + 2}`} aria-hidden="true">
      <path d={sparkPath(values, width, height)} />
    </svg>
  );
}

export function Section({ title, actions, children }: { title: string; actions?: ReactNode; children: ReactNode }) {
  return (
    <section className="panel">
      <header className="panel-head">
        <h2>{title}</h2>
        {actions ? <div className="panel-actions">{actions}</div> : null}
      </header>
      {children}
    </section>
  );
}

export function Loading({ error, loading }: { error: string | null; loading: boolean }) {
  if (error) return <p className="error" role="alert">Could not load: {error}</p>;
  if (loading) return <p className="muted">Loading…</p>;
  return null;
}

export function FieldError({ message }: { message: string | undefined }) {
  return message ? <span className="field-error">{message}</span> : null;
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="muted empty">{children}</p>;
}
