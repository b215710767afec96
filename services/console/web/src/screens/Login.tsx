import { useState, type FormEvent } from "react";
import { api, ApiError } from "../api";
import { useSession } from "../hooks";
import { hasErrors, validateLogin, type Errors, type LoginInput } from "../lib/validate";
import { FieldError } from "../components/ui";
import type { Me } from "../types";

export function Login() {
  const { setMe } = useSession();
  const [form, setForm] = useState<LoginInput>({ username: "", password: "" });
  const [errors, setErrors] = useState<Errors<keyof LoginInput>>({});
  const [failure, setFailure] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const errs = validateLogin(form);
    setErrors(errs);
    if (hasErrors(errs)) return;
    setBusy(true);
    setFailure(null);
    try {
      const me = await api.post<Me>("/api/login", { username: form.username.trim(), password: form.password });
      setMe(me);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) setFailure("Wrong user name or password.");
      else if (err instanceof ApiError && err.status === 429) setFailure("Too many attempts: wait a minute and try again.");
      else setFailure(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="login-page">
      <form className="login panel" onSubmit={(e) => void submit(e)} noValidate aria-label="sign in">
        <h1>flowwatch console</h1>
        <label>
          User name
          <input
            name="username"
            autoComplete="username"
            value={form.username}
            onChange={(e) => setForm({ ...form, username: e.target.value })}
            autoFocus
          />
          <FieldError message={errors.username} />
        </label>
        <label>
          Password
          <input
            name="password"
            type="password"
            autoComplete="current-password"
            value={form.password}
            onChange={(e) => setForm({ ...form, password: e.target.value })}
          />
          <FieldError message={errors.password} />
        </label>
        {failure ? (
          <p className="error" role="alert">
            {failure}
          </p>
        ) : null}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <p className="muted">
          Not an operator? See <a href="/public">the public status page</a>.
        </p>
      </form>
    </div>
  );
}
