import { useState } from "react";
import { api, ApiError, query } from "../api";
import { useApi, useInterval } from "../hooks";
import { formatAgo, formatTime } from "../lib/format";
import { Empty, Loading } from "../components/ui";
import type { LeakReport } from "../types";

/** Leak reports sent by the public, for operators to triage. */
export function LeakReports() {
  const [status, setStatus] = useState("new");
  const list = useApi<{ items: LeakReport[] }>(`/api/reports${query({ status })}`);
  useInterval(list.reload, 10_000);
  return (
    <div className="screen" data-screen="reports">
      <h1>Reports from the public</h1>
      <div className="filters">
        <label className="inline">
          Status{" "}
          <select value={status} onChange={(e) => setStatus(e.target.value)}>
            <option value="new">new</option>
            <option value="confirmed">confirmed</option>
            <option value="rejected">rejected</option>
            <option value="">all</option>
          </select>
        </label>
      </div>
      <Loading error={list.error} loading={list.loading && !list.data} />
      {list.data && list.data.items.length === 0 ? <Empty>No {status} reports.</Empty> : null}
      <ul className="report-list" data-testid="leak-reports">
        {(list.data?.items ?? []).map((r) => (
          <ReportCard key={r.id} report={r} onChanged={list.reload} />
        ))}
      </ul>
    </div>
  );
}

function ReportCard({ report, onChanged }: { report: LeakReport; onChanged: () => void }) {
  const [note, setNote] = useState("");
  const [error, setError] = useState<string | null>(null);
  const triage = async (status: "confirmed" | "rejected") => {
    try {
      await api.post(`/api/reports/${encodeURIComponent(report.id)}/triage`, { status, note: note.trim() });
      onChanged();
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    }
  };
  return (
    <li className="panel report-card" data-report={report.id}>
      <div>
        <strong>{report.locality}</strong> <span className="muted small">{formatTime(report.ts)} UTC ({formatAgo(report.ts)})</span>{" "}
        <span className={`state ${report.status}`}>{report.status}</span>
      </div>
      <p className="remark">{report.remark}</p>
      <p className="small muted">
        from {report.name}
        {report.contact ? ` · ${report.contact}` : ""}
      </p>
      {report.triage ? (
        <p className="small">
          {report.status} by {report.triage.by} {formatAgo(report.triage.at)}
          {report.triage.note ? ` — “${report.triage.note}”` : ""}
        </p>
      ) : (
        <div className="actions">
          <input placeholder="note" value={note} onChange={(e) => setNote(e.target.value)} aria-label="note" />
          <button className="primary" onClick={() => void triage("confirmed")}>
            Confirm leak
          </button>
          <button onClick={() => void triage("rejected")}>Reject</button>
        </div>
      )}
      {error ? <p className="error">{error}</p> : null}
    </li>
  );
}
