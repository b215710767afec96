// Form checks done in the browser before a request: the server checks again; these only spare a
// round trip and name the field in words a person understands.

export type Errors<K extends string> = Partial<Record<K, string>>;

export const LIMITS = {
  name: 100,
  remark: 2000,
  remarkMin: 3,
  contact: 200,
  note: 2000,
  username: 64,
  passwordMin: 10,
};

export interface LeakReportInput {
  name: string;
  locality: string;
  remark: string;
  contact: string;
}

export function validateLeakReport(input: LeakReportInput, localities: readonly string[]): Errors<keyof LeakReportInput> {
  const errors: Errors<keyof LeakReportInput> = {};
  const name = input.name.trim();
  if (!name) errors.name = "Please give your name.";
  else if (name.length > LIMITS.name) errors.name = `At most ${LIMITS.name} characters.`;
  if (!input.locality) errors.locality = "Please choose where you saw it.";
  else if (localities.length > 0 && !localities.includes(input.locality)) errors.locality = "Unknown locality.";
  const remark = input.remark.trim();
  if (remark.length < LIMITS.remarkMin) errors.remark = "Please say what you saw (a few words at least).";
  else if (remark.length > LIMITS.remark) errors.remark = `At most ${LIMITS.remark} characters.`;
  const contact = input.contact.trim();
  if (contact) {
    if (contact.length > LIMITS.contact) errors.contact = `At most ${LIMITS.contact} characters.`;
    else if (!isEmail(contact) && !isPhone(contact)) errors.contact = "An e-mail address or a phone number, or leave it empty.";
  }
  return errors;
}

export function isEmail(text: string): boolean {
  return /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(text);
}

export function isPhone(text: string): boolean {
  const digits = text.replace(/[\s().-]/g, "");
  return /^\+?\d{6,15}$/.test(digits);
}

export interface LoginInput {
  username: string;
  password: string;
}

export function validateLogin(input: LoginInput): Errors<keyof LoginInput> {
  const errors: Errors<keyof LoginInput> = {};
  if (!input.username.trim()) errors.username = "Enter your user name.";
  if (!input.password) errors.password = "Enter your password.";
  return errors;
}

export interface UserInput {
  username: string;
  password: string;
  role: string;
}

export const ROLES = ["viewer", "operator", "admin"] as const;

export function validateUser(input: UserInput): Errors<keyof UserInput> {
  const errors: Errors<keyof UserInput> = {};
  const u = input.username.trim();
  if (!u) errors.username = "A user name is needed.";
  else if (u.length > LIMITS.username) errors.username = `At most ${LIMITS.username} characters.`;
  else if (!/^[A-Za-z0-9._@-]+$/.test(u)) errors.username = "Letters, digits and . _ @ - only.";
  if (input.password.length < LIMITS.passwordMin) errors.password = `At least ${LIMITS.passwordMin} characters.`;
  if (!(ROLES as readonly string[]).includes(input.role)) errors.role = "Choose a role.";
  return errors;
}

/** Alertmanager-style durations: "30m", "2h", "1d", "1h30m". Returns milliseconds or null. */
export function parseDuration(text: string): number | null {
  const t = text.trim();
  if (!/^(\d+[smhdw])+$/.test(t)) return null;
  const unit: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
  let total = 0;
  for (const m of t.matchAll(/(\d+)([smhdw])/g)) total += Number(m[1]) * (unit[m[2] ?? "s"] ?? 0);
  return total > 0 ? total : null;
}

export interface Matcher {
  name: string;
  value: string;
  isRegex: boolean;
}

export interface SilenceInput {
  matchers: Matcher[];
  duration: string;
  comment: string;
}

export function validateSilence(input: SilenceInput): Errors<"matchers" | "duration" | "comment"> {
  const errors: Errors<"matchers" | "duration" | "comment"> = {};
  const real = input.matchers.filter((m) => m.name.trim());
  if (real.length === 0) errors.matchers = "At least one label to match.";
  else if (real.some((m) => !m.value.trim())) errors.matchers = "Every matcher needs a value.";
  else if (real.some((m) => m.isRegex && !isRegex(m.value))) errors.matchers = "A regular expression does not parse.";
  const ms = parseDuration(input.duration);
  if (ms === null) errors.duration = 'A duration such as "30m", "2h" or "1d".';
  else if (ms > 30 * 86_400_000) errors.duration = "At most 30 days.";
  if (!input.comment.trim()) errors.comment = "Say why (it is shown to the others).";
  return errors;
}

function isRegex(text: string): boolean {
  try {
    new RegExp(text);
    return true;
  } catch {
    return false;
  }
}

export function hasErrors(errors: object): boolean {
  return Object.values(errors).some(Boolean);
}
