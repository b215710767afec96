// The live feed (SSE /api/live) as a pure reducer: events in, what the screens show out. Kept free
// of EventSource so it is tested alone; useLiveFeed() in hooks.ts wires it to the browser.

import { toMs } from "./format";

export interface LiveAlert {
  fingerprint: string;
  status: string;
  severity: string;
  alertname: string;
  summary: string;
  site: string;
  zone: string;
  at: number;
  startsAt: number | null;
}

export interface LiveZone {
  status?: string;
  probability: number | null;
  incident_type: string | null;
  ts: number;
}

export interface LiveAnomaly {
  sensor_id: string;
  zone: string;
  site: string;
  score: number;
  severity: string;
  ts: number;
}

export interface LiveState {
  connected: boolean;
  /** When the feed first answered: alerts that started firing before are not news (a re-notification is not). */
  since: number | null;
  /** Incremented on every alert event: screens that list alerts refetch when it changes. */
  alertVersion: number;
  /** Firing critical alerts not yet dismissed, newest first. */
  popups: LiveAlert[];
  /** Fingerprints known to be firing, so a repeat update does not pop up again. */
  firing: Record<string, true>;
  zones: Record<string, LiveZone>;
  anomalies: LiveAnomaly[];
  counts: Record<string, number>;
  lastEventAt: number | null;
}

export type LiveAction =
  | { type: "open" }
  | { type: "closed" }
  | { type: "event"; event: string; data: unknown; now: number }
  | { type: "dismiss"; fingerprint: string };

export const MAX_POPUPS = 5;
export const MAX_ANOMALIES = 50;
/** Clock skew allowed between the alerts service and this browser when judging "started after we opened". */
export const SKEW_MS = 60_000;
const MAX_FIRING = 5000;

export const initialLive: LiveState = {
  connected: false,
  since: null,
  alertVersion: 0,
  popups: [],
  firing: {},
  zones: {},
  anomalies: [],
  counts: {},
  lastEventAt: null,
};

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function str(v: unknown, fallback = ""): string {
  return typeof v === "string" ? v : typeof v === "number" ? String(v) : fallback;
}

function num(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/** An alert from either the alerts topic record (labels.severity, starts_at) or the console's list shape. */
export function toLiveAlert(data: unknown, now: number): LiveAlert | null {
  if (!isObj(data) || typeof data.fingerprint !== "string") return null;
  const labels = isObj(data.labels) ? data.labels : {};
  const annotations = isObj(data.annotations) ? data.annotations : {};
  return {
    fingerprint: data.fingerprint,
    status: str(data.status, "firing"),
    severity: str(data.severity ?? labels.severity, "info"),
    alertname: str(data.alertname ?? labels.alertname, "alert"),
    summary: str(annotations.summary ?? annotations.description),
    site: str(labels.site),
    zone: str(labels.zone),
    at: num(data.updated_at) ?? num(data.starts_at) ?? now,
    startsAt: num(data.starts_at) ?? (typeof data.startsAt === "string" ? toMs(data.startsAt) : null),
  };
}

export function liveReducer(state: LiveState, action: LiveAction): LiveState {
  switch (action.type) {
    case "open":
      return state.connected ? state : { ...state, connected: true };
    case "closed":
      return state.connected ? { ...state, connected: false } : state;
    case "dismiss":
      return { ...state, popups: state.popups.filter((p) => p.fingerprint !== action.fingerprint) };
    case "event":
      return onEvent(state, action.event, action.data, action.now);
  }
}

function onEvent(state: LiveState, event: string, data: unknown, now: number): LiveState {
  const since = state.since ?? now;
  if (event === "hello") return { ...state, connected: true, since };
  const counts = { ...state.counts, [event]: (state.counts[event] ?? 0) + 1 };
  const base = { ...state, counts, lastEventAt: now, connected: true, since };
  switch (event) {
    case "alert":
      return onAlert(base, data, now);
    case "risk":
      return onRisk(base, data);
    case "anomaly":
      return onAnomaly(base, data);
    default:
      return base;
  }
}

function onAlert(state: LiveState, data: unknown, now: number): LiveState {
  const alert = toLiveAlert(data, now);
  if (!alert) return state;
  const alertVersion = state.alertVersion + 1;
  if (alert.status !== "firing") {
    const { [alert.fingerprint]: _gone, ...firing } = state.firing;
    return {
      ...state,
      alertVersion,
      firing,
      popups: state.popups.filter((p) => p.fingerprint !== alert.fingerprint),
    };
  }
  if (state.firing[alert.fingerprint]) return { ...state, alertVersion };
  let firing: Record<string, true> = { ...state.firing, [alert.fingerprint]: true };
  const keys = Object.keys(firing);
  if (keys.length > MAX_FIRING) firing = Object.fromEntries(keys.slice(-MAX_FIRING).map((k) => [k, true as const]));
  const news = alert.startsAt === null || alert.startsAt >= (state.since ?? now) - SKEW_MS;
  const popups =
    alert.severity === "critical" && news ? [alert, ...state.popups].slice(0, MAX_POPUPS) : state.popups;
  return { ...state, alertVersion, firing, popups };
}

function onRisk(state: LiveState, data: unknown): LiveState {
  if (!isObj(data) || typeof data.zone !== "string") return state;
  const zone: LiveZone = {
    probability: num(data.probability),
    incident_type: typeof data.incident_type === "string" ? data.incident_type : null,
    ts: num(data.ts) ?? 0,
  };
  if (typeof data.status === "string") zone.status = data.status;
  const prev = state.zones[data.zone];
  if (prev && prev.ts > zone.ts) return state;
  return { ...state, zones: { ...state.zones, [data.zone]: zone } };
}

function onAnomaly(state: LiveState, data: unknown): LiveState {
  if (!isObj(data) || typeof data.sensor_id !== "string") return state;
  const a: LiveAnomaly = {
    sensor_id: data.sensor_id,
    zone: str(data.zone),
    site: str(data.site),
    score: num(data.score) ?? 0,
    severity: str(data.severity, "warning"),
    ts: num(data.ts) ?? 0,
  };
  return { ...state, anomalies: [a, ...state.anomalies].slice(0, MAX_ANOMALIES) };
}

/** Parse an SSE `data:` payload; a malformed one is ignored rather than breaking the feed. */
export function parseEventData(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return null;
  }
}

/** A zone's state from the last overview answer, updated by a newer live risk record. */
export function mergeZone<T extends { status: string; probability: number | null; incident_type: string | null }>(
  zone: T,
  live: LiveZone | undefined,
  threshold = 0.7,
): T {
  if (!live) return zone;
  const risky = live.probability !== null && live.probability >= threshold && live.incident_type !== "normal";
  const status = live.status ?? (risky ? "at_risk" : zone.status === "at_risk" ? "normal" : zone.status);
  return { ...zone, probability: live.probability, incident_type: live.incident_type, status };
}
