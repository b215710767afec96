import { useEffect, useState, type FormEvent } from "react";
import { api, ApiError } from "../api";
import { hasErrors, LIMITS, validateLeakReport, type Errors, type LeakReportInput } from "../lib/validate";
import { FieldError, Light } from "../components/ui";
import type { Locality } from "../types";

const LIGHT_WORDS: Record<string, string> = { green: "Normal supply", amber: "Disturbance", red: "Incident" };

/** What the public sees: no login, no sensor ids, plain words. */
export function PublicPage() {
  const [localities, setLocalities] = useState<Locality[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const load = () =>
      api
        .get<{ localities: Locality[] }>("/api/public/localities")
        .then((d) => {
          setLocalities(d.localities);
          setError(null);
        })
        .catch(() => setError("The status is not available right now. Please try again later."));
    void load();
    const id = window.setInterval(() => void load(), 60_000);
    return () => window.clearInterval(id);
  }, []);
  return (
    <div className="public">
      <header className="public-head">
        <h1>Water supply in your area</h1>
        <p>The current situation of the water network, updated every minute.</p>
      </header>
      <main>
        {error ? <p className="error">{error}</p> : null}
        {localities === null && !error ? <p className="muted">Loading…</p> : null}
        <ul className="localities" data-testid="localities">
          {(localities ?? []).map((l) => (
            <li key={l.locality} className={`locality ${l.status}`} data-locality={l.locality} data-light={l.status}>
              <Light light={l.status} />
              <div>
                <h2>{l.locality}</h2>
                <strong>{LIGHT_WORDS[l.status] ?? l.status}</strong>
                <p>{l.message}</p>
              </div>
            </li>
          ))}
        </ul>
        <ReportForm localities={(localities ?? []).map((l) => l.locality)} />
      </main>
      <footer className="public-foot muted small">
        In an emergency call your water utility's emergency number. Staff: <a href="/">sign in</a>.
      </footer>
    </div>
  );
}

const EMPTY: LeakReportInput = { name: "", locality: "", remark: "", contact: "" };

function ReportForm({ localities }: { localities: string[] }) {
  const [form, setForm] = useState<LeakReportInput>(EMPTY);
  const [errors, setErrors] = useState<Errors<keyof LeakReportInput>>({});
  const [sent, setSent] = useState<string | null>(null);
  const [failure, setFailure] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const errs = validateLeakReport(form, localities);
    setErrors(errs);
    if (hasErrors(errs)) return;
    setBusy(true);
    setFailure(null);
    try {
      const body: Record<string, string> = { name: form.name.trim(), locality: form.locality, remark: form.remark.trim() };
      if (form.contact.trim()) body.contact = form.contact.trim();
      const res = await api.post<{ id: string; message: string }>("/api/public/reports", body);
      setSent(`${res.message} (reference ${res.id})`);
      setForm(EMPTY);
    } catch (err) {
      if (err instanceof ApiError && err.status === 429) setFailure("Too many reports from your connection: please try again later.");
      else setFailure(err instanceof ApiError ? err.message : "The report could not be sent. Please try again.");
    } finally {
      setBusy(false);
    }
  };

  return (
    <section className="panel report-form">
      <h2>Report a suspected leak</h2>
      {sent ? (
        <p className="ok" role="status" data-testid="report-sent">
          Thank you. {sent}
        </p>
      ) : null}
      <form onSubmit={(e) => void submit(e)} noValidate aria-label="report a suspected leak">
        <label>
          Your name
          <input name="name" value={form.name} maxLength={LIMITS.name} onChange={(e) => setForm({ ...form, name: e.target.value })} autoComplete="name" />
          <FieldError message={errors.name} />
        </label>
        <label>
          Where
          <select name="locality" value={form.locality} onChange={(e) => setForm({ ...form, locality: e.target.value })}>
            <option value="">choose…</option>
            {localities.map((l) => (
              <option key={l}>{l}</option>
            ))}
          </select>
          <FieldError message={errors.locality} />
        </label>
        <label>
          What did you see?
          <textarea
            name="remark"
            rows={4}
            value={form.remark}
            maxLength={LIMITS.remark}
            onChange={(e) => setForm({ ...form, remark: e.target.value })}
            placeholder="e.g. water bubbling from the pavement at the corner of Mill Street"
          />
          <FieldError message={errors.remark} />
        </label>
        <label>
          Contact (optional: e-mail or phone, if we may ask you more)
          <input name="contact" value={form.contact} maxLength={LIMITS.contact} onChange={(e) => setForm({ ...form, contact: e.target.value })} autoComplete="email" />
          <FieldError message={errors.contact} />
        </label>
        {failure ? (
          <p className="error" role="alert">
            {failure}
          </p>
        ) : null}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Sending…" : "Send report"}
        </button>
      </form>
    </section>
  );
}
