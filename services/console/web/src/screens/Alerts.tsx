import { useState, type FormEvent } from "react";
import { api, ApiError, query } from "../api";
import { useApi, useInterval, useLive, useSession } from "../hooks";
import { formatAgo, formatTime, humanize, toMs } from "../lib/format";
import { severityColour, severityRank } from "../lib/status";
import { alertOrder } from "../lib/stats";
import { hasErrors, validateSilence, type Matcher } from "../lib/validate";
import { Empty, FieldError, Loading, Section, SeverityBadge } from "../components/ui";
import { Link, useLocation } from "../router";
import type { AlertItem, Silence } from "../types";

type Mode = "ack" | "comment" | "assign" | "verdict" | "silence";

export function Alerts() {
  const { live } = useLive();
  const { search } = useLocation();
  const [status, setStatus] = useState(search.get("status") ?? "firing");
  const [severity, setSeverity] = useState("");
  const [site, setSite] = useState("");
  const filters = { status, severity, site };
  const list = useApi<{ items: AlertItem[] }>(`/api/alerts${query(filters)}`, live.alertVersion);
  const silences = useApi<{ items?: Silence[] } | Silence[]>("/api/silences", live.alertVersion);
  const focus = search.get("fp");
  // The live feed says when something changed; the poll catches what the alerts API mirrors a moment later.
  useInterval(list.reload, 10_000);

  const items = alertOrder(list.data?.items ?? [], severityRank, toMs);
  const silenceList = Array.isArray(silences.data) ? silences.data : (silences.data?.items ?? []);

  return (
    <div className="screen" data-screen="alerts">
      <h1>Alerts</h1>
      <div className="filters">
        <label className="inline">
          Status{" "}
          <select value={status} onChange={(e) => setStatus(e.target.value)} name="status">
            <option value="firing">firing</option>
            <option value="resolved">resolved</option>
            <option value="">all</option>
          </select>
        </label>
        <label className="inline">
          Severity{" "}
          <select value={severity} onChange={(e) => setSeverity(e.target.value)} name="severity">
            <option value="">any</option>
            <option value="critical">critical</option>
            <option value="warning">warning</option>
            <option value="info">info</option>
          </select>
        </label>
        <label className="inline">
          Site <input value={site} onChange={(e) => setSite(e.target.value.trim())} placeholder="any" size={10} name="site" />
        </label>
        <a className="button" href={`/api/alerts/export.csv${query(filters)}`} download>
          Export CSV
        </a>
      </div>
      <Loading error={list.error} loading={list.loading && !list.data} />
      {list.data && items.length === 0 ? <Empty>No {status || ""} alerts.</Empty> : null}
      <ul className="alert-list" data-testid="alert-list">
        {items.map((a) => (
          <AlertCard key={a.fingerprint} alert={a} focused={a.fingerprint === focus} onChanged={list.reload} />
        ))}
      </ul>
      <Silences items={silenceList} onChanged={silences.reload} />
    </div>
  );
}

function AlertCard({ alert, focused, onChanged }: { alert: AlertItem; focused: boolean; onChanged: () => void }) {
  const { can } = useSession();
  const [mode, setMode] = useState<Mode | null>(null);
  const summary = alert.annotations.summary ?? alert.annotations.description ?? "";
  const { site, zone, sensor } = alert.labels;
  return (
    <li
      className={`alert-card ${alert.status} ${focused ? "focused" : ""}`}
      style={{ borderLeftColor: severityColour(alert.severity) }}
      data-fingerprint={alert.fingerprint}
      data-testid="alert-card"
    >
      <div className="alert-head">
        <SeverityBadge severity={alert.severity} />
        <strong>{alert.alertname}</strong>
        <span className={`state ${alert.status}`}>{alert.status}</span>
        <span className="muted small" title={formatTime(alert.startsAt)}>
          since {formatAgo(alert.startsAt)}
        </span>
      </div>
      {summary ? <p className="alert-summary">{summary}</p> : null}
      <p className="small">
        {site ? <>site {site} </> : null}
        {zone ? (
          <>
            · zone <Link to={`/zones/${encodeURIComponent(zone)}`}>{zone}</Link>{" "}
          </>
        ) : null}
        {sensor ? (
          <>
            · sensor <Link to={`/sensors/${encodeURIComponent(sensor)}`}>{sensor}</Link>
          </>
        ) : null}
      </p>
      <dl className="alert-meta small">
        {alert.ack ? (
          <div data-testid="ack-info">
            <dt>acknowledged</dt>
            <dd>
              by {alert.ack.by} {formatAgo(alert.ack.at)}
              {alert.ack.note ? <> — “{alert.ack.note}”</> : null}
            </dd>
          </div>
        ) : null}
        {alert.assignee ? (
          <div>
            <dt>assigned to</dt>
            <dd>{alert.assignee}</dd>
          </div>
        ) : null}
        {alert.verdict ? (
          <div>
            <dt>verdict</dt>
            <dd>{humanize(alert.verdict)}</dd>
          </div>
        ) : null}
      </dl>
      {alert.comments.length ? (
        <ul className="comments small">
          {alert.comments.map((c, i) => (
            <li key={i}>
              <strong>{c.by ?? c.author}</strong> {formatAgo(c.at ?? c.ts)}: {c.text}
            </li>
          ))}
        </ul>
      ) : null}
      {can("operator") ? (
        <div className="actions">
          {!alert.ack && alert.status === "firing" ? (
            <button className="primary" onClick={() => setMode(mode === "ack" ? null : "ack")}>
              Acknowledge
            </button>
          ) : null}
          <button onClick={() => setMode(mode === "comment" ? null : "comment")}>Comment</button>
          <button onClick={() => setMode(mode === "assign" ? null : "assign")}>Assign</button>
          <button onClick={() => setMode(mode === "verdict" ? null : "verdict")}>Verdict</button>
          <button onClick={() => setMode(mode === "silence" ? null : "silence")}>Silence</button>
        </div>
      ) : null}
      {mode ? (
        <ActionForm
          mode={mode}
          alert={alert}
          onDone={() => {
            setMode(null);
            onChanged();
          }}
          onCancel={() => setMode(null)}
        />
      ) : null}
    </li>
  );
}

function ActionForm({ mode, alert, onDone, onCancel }: { mode: Mode; alert: AlertItem; onDone: () => void; onCancel: () => void }) {
  const [text, setText] = useState("");
  const [verdict, setVerdict] = useState("true_positive");
  const [duration, setDuration] = useState("2h");
  const [matchers, setMatchers] = useState<Matcher[]>(
    ["alertname", "site", "zone", "sensor"]
      .filter((k) => alert.labels[k])
      .map((k) => ({ name: k, value: alert.labels[k] ?? "", isRegex: false })),
  );
  const [error, setError] = useState<string | null>(null);
  const [fieldErrors, setFieldErrors] = useState<Record<string, string | undefined>>({});
  const [busy, setBusy] = useState(false);
  const fp = encodeURIComponent(alert.fingerprint);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    let call: () => Promise<unknown>;
    switch (mode) {
      case "ack":
        call = () => api.post(`/api/alerts/${fp}/ack`, { note: text.trim() });
        break;
      case "comment":
        if (!text.trim()) return setFieldErrors({ text: "Write something." });
        call = () => api.post(`/api/alerts/${fp}/comment`, { text: text.trim() });
        break;
      case "assign":
        if (!text.trim()) return setFieldErrors({ text: "Whom to assign it to." });
        call = () => api.post(`/api/alerts/${fp}/assign`, { assignee: text.trim() });
        break;
      case "verdict":
        call = () => api.post(`/api/alerts/${fp}/verdict`, { verdict, comment: text.trim() });
        break;
      case "silence": {
        const errs = validateSilence({ matchers, duration, comment: text });
        setFieldErrors(errs);
        if (hasErrors(errs)) return;
        call = () => api.post("/api/silences", { matchers: matchers.filter((m) => m.name.trim()), duration, comment: text.trim() });
        break;
      }
    }
    setBusy(true);
    try {
      await call();
      onDone();
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  const label: Record<Mode, string> = { ack: "Note", comment: "Comment", assign: "Assignee", verdict: "Comment (optional)", silence: "Why" };
  return (
    <form className="action-form" onSubmit={(e) => void submit(e)} aria-label={mode}>
      {mode === "verdict" ? (
        <fieldset className="radios">
          <label>
            <input type="radio" name="verdict" checked={verdict === "true_positive"} onChange={() => setVerdict("true_positive")} /> real incident
            (true positive)
          </label>
          <label>
            <input type="radio" name="verdict" checked={verdict === "false_positive"} onChange={() => setVerdict("false_positive")} /> false alarm
            (false positive)
          </label>
        </fieldset>
      ) : null}
      {mode === "silence" ? (
        <>
          {matchers.map((m, i) => (
            <div key={i} className="matcher">
              <input aria-label="label" value={m.name} onChange={(e) => setMatchers(matchers.map((x, j) => (j === i ? { ...x, name: e.target.value } : x)))} />
              <span>{m.isRegex ? "=~" : "="}</span>
              <input aria-label="value" value={m.value} onChange={(e) => setMatchers(matchers.map((x, j) => (j === i ? { ...x, value: e.target.value } : x)))} />
              <label className="inline small">
                <input type="checkbox" checked={m.isRegex} onChange={(e) => setMatchers(matchers.map((x, j) => (j === i ? { ...x, isRegex: e.target.checked } : x)))} /> regex
              </label>
              <button type="button" className="link" onClick={() => setMatchers(matchers.filter((_, j) => j !== i))}>
                remove
              </button>
            </div>
          ))}
          <button type="button" className="link" onClick={() => setMatchers([...matchers, { name: "", value: "", isRegex: false }])}>
            + matcher
          </button>
          <FieldError message={fieldErrors.matchers} />
          <label>
            Duration <input name="duration" value={duration} onChange={(e) => setDuration(e.target.value)} size={6} />
            <FieldError message={fieldErrors.duration} />
          </label>
        </>
      ) : null}
      <label>
        {label[mode]}
        {mode === "assign" ? (
          <input name="text" value={text} onChange={(e) => setText(e.target.value)} autoFocus />
        ) : (
          <textarea name="text" rows={2} value={text} onChange={(e) => setText(e.target.value)} autoFocus maxLength={2000} />
        )}
        <FieldError message={fieldErrors.text ?? fieldErrors.comment} />
      </label>
      {error ? <p className="error">{error}</p> : null}
      <div className="actions">
        <button type="submit" className="primary" disabled={busy}>
          {mode === "ack" ? "Acknowledge" : mode === "silence" ? "Create silence" : "Save"}
        </button>
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

function Silences({ items, onChanged }: { items: Silence[]; onChanged: () => void }) {
  const { can } = useSession();
  const active = items.filter((s) => (typeof s.status === "string" ? s.status : s.status?.state) !== "expired");
  const expire = async (id: string) => {
    await api.del(`/api/silences/${encodeURIComponent(id)}`);
    onChanged();
  };
  return (
    <Section title="Silences">
      {active.length === 0 ? (
        <Empty>No active silences.</Empty>
      ) : (
        <ul className="silences small">
          {active.map((s) => (
            <li key={s.id}>
              <code>{s.matchers.map((m) => `${m.name}${m.isRegex ? "=~" : "="}${m.value}`).join(", ")}</code> until {formatTime(s.endsAt)} —{" "}
              {s.comment} <span className="muted">({s.createdBy})</span>{" "}
              {can("operator") ? (
                <button className="link" onClick={() => void expire(s.id)}>
                  expire
                </button>
              ) : null}
            </li>
          ))}
        </ul>
      )}
    </Section>
  );
}
