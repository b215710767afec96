import { useState, type FormEvent } from "react";
import { api, ApiError } from "../api";
import { useApi, useSession } from "../hooks";
import { formatAgo, formatTime } from "../lib/format";
import { hasErrors, ROLES, validateUser, type Errors, type UserInput } from "../lib/validate";
import { FieldError, Loading, Section } from "../components/ui";
import type { ConsoleUser } from "../types";

export function Admin() {
  const users = useApi<{ items: ConsoleUser[] }>("/api/users");
  const { me } = useSession();
  const [error, setError] = useState<string | null>(null);
  const change = async (name: string, body: Partial<{ role: string; disabled: boolean; password: string }>) => {
    setError(null);
    try {
      await api.patch(`/api/users/${encodeURIComponent(name)}`, body);
      users.reload();
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    }
  };
  return (
    <div className="screen" data-screen="admin">
      <h1>Users and roles</h1>
      <Loading error={users.error} loading={users.loading && !users.data} />
      {error ? <p className="error">{error}</p> : null}
      <Section title="Users">
        <div className="scroll-x">
          <table className="table" data-testid="users">
            <thead>
              <tr>
                <th>user</th>
                <th>role</th>
                <th>state</th>
                <th>last sign-in</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {(users.data?.items ?? []).map((u) => (
                <tr key={u.name} className={u.disabled ? "muted" : ""}>
                  <td>{u.name}</td>
                  <td>
                    <select
                      aria-label={`role of ${u.name}`}
                      value={u.role}
                      disabled={u.name === me?.user.name}
                      onChange={(e) => void change(u.name, { role: e.target.value })}
                    >
                      {ROLES.map((r) => (
                        <option key={r}>{r}</option>
                      ))}
                    </select>
                  </td>
                  <td>{u.disabled ? "disabled" : "active"}</td>
                  <td title={formatTime(u.last_login_at)}>{u.last_login_at ? formatAgo(u.last_login_at) : "never"}</td>
                  <td>
                    {u.name !== me?.user.name ? (
                      <button className="link" onClick={() => void change(u.name, { disabled: !u.disabled })}>
                        {u.disabled ? "enable" : "disable"}
                      </button>
                    ) : null}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </Section>
      <AddUser onAdded={users.reload} />
    </div>
  );
}

function AddUser({ onAdded }: { onAdded: () => void }) {
  const [form, setForm] = useState<UserInput>({ username: "", password: "", role: "viewer" });
  const [errors, setErrors] = useState<Errors<keyof UserInput>>({});
  const [result, setResult] = useState<string | null>(null);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const errs = validateUser(form);
    setErrors(errs);
    if (hasErrors(errs)) return;
    try {
      await api.post("/api/users", { ...form, username: form.username.trim() });
      setResult(`User ${form.username.trim()} added.`);
      setForm({ username: "", password: "", role: "viewer" });
      onAdded();
    } catch (err) {
      setResult(err instanceof ApiError ? `Not added: ${err.message}` : String(err));
    }
  };
  return (
    <Section title="Add a user">
      <form className="grid-form" onSubmit={(e) => void submit(e)} noValidate>
        <label>
          User name
          <input value={form.username} onChange={(e) => setForm({ ...form, username: e.target.value })} autoComplete="off" />
          <FieldError message={errors.username} />
        </label>
        <label>
          Password
          <input type="password" value={form.password} onChange={(e) => setForm({ ...form, password: e.target.value })} autoComplete="new-password" />
          <FieldError message={errors.password} />
        </label>
        <label>
          Role
          <select value={form.role} onChange={(e) => setForm({ ...form, role: e.target.value })}>
            {ROLES.map((r) => (
              <option key={r}>{r}</option>
            ))}
          </select>
          <FieldError message={errors.role} />
        </label>
        <button type="submit" className="primary">
          Add
        </button>
      </form>
      {result ? <p role="status">{result}</p> : null}
    </Section>
  );
}
