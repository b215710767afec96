// Shapes of the console API's answers (services/console/openapi.yaml); only what the screens read.

export type Role = "viewer" | "operator" | "admin";

export interface User {
  name: string;
  role: Role;
}

export interface Me {
  user: User;
  csrf: string;
}

export interface NetworkSensor {
  id: string;
  asset: string;
  metrics: string[];
}

export interface NetworkZone {
  id: string;
  utility: string;
  sensors: NetworkSensor[];
}

export interface NetworkSite {
  id: string;
  utility?: string;
  zones: NetworkZone[];
}

export interface Network {
  sites: NetworkSite[];
}

export interface ZoneState {
  site: string;
  zone: string;
  utility: string;
  status: string;
  probability: number | null;
  incident_type: string | null;
}

export interface Kpis {
  readings_per_s: number | null;
  anomalies_last_hour: number | null;
  firing: { critical: number; warning: number; info: number };
  zones_at_risk: number | null;
  loss_today: { volume: number | null; cost: number | null; unit: string; currency: string };
}

export interface Overview {
  kpis: Kpis;
  zones: ZoneState[];
}

export interface ZoneSensor {
  id: string;
  asset: string;
  latest: Record<string, number> | null;
  score: number | null;
  anomalous: boolean;
}

export interface ZoneDetail {
  site: string;
  zone: string;
  utility: string;
  status: string;
  risk: { probability: number | null; incident_type: string | null; ts: number | null } | null;
  sensors: ZoneSensor[];
  metrics?: string[];
}

export interface SeriesPoint {
  ts: number;
  count?: number;
  min: number | null;
  max: number | null;
  mean: number | null;
}

export interface BandPoint {
  ts: number;
  q10: number | null;
  q50: number | null;
  q90: number | null;
  expected: number | null;
  actual: number | null;
}

export interface Series {
  points: SeriesPoint[];
  band?: BandPoint[];
  anomalies?: { ts: number; score?: number; severity?: string }[];
}

export interface RiskPoint {
  ts: number;
  probability: number;
  incident_type: string;
}

export interface LossDay {
  day: string;
  volume: number | null;
  cost: number | null;
  unit: string | null;
  currency: string | null;
}

export interface Episode {
  id: number;
  sensor_id: string;
  site: string;
  zone: string;
  utility?: string;
  start_ts: number;
  end_ts: number;
  state: string;
  anomaly_count: number;
  peak_score: number | null;
  severity: string;
  reasons?: unknown;
  alert_fingerprint?: string | null;
  ack_by?: string | null;
  ack_at?: number | null;
  ack_note?: string | null;
  assignee?: string | null;
  verdict?: string | null;
}

export interface SensorDetail {
  id: string;
  site: string;
  zone: string;
  asset: string;
  utility?: string;
  latest: Record<string, number> | null;
  score: number | null;
  threshold?: number | null;
  reasons: string[];
  usual: Record<string, { mean: number | null; std: number | null }>;
  episodes: Episode[];
  metrics?: string[];
}

export interface Ack {
  by: string;
  at: number | string;
  note: string;
}

export interface Comment {
  by?: string;
  author?: string;
  at?: number | string;
  ts?: number | string;
  text: string;
}

export interface AlertItem {
  fingerprint: string;
  alertname: string;
  severity: string;
  status: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  startsAt: string | number | null;
  endsAt: string | number | null;
  ack: Ack | null;
  assignee: string | null;
  comments: Comment[];
  verdict: string | null;
}

export interface Silence {
  id: string;
  matchers: { name: string; value: string; isRegex: boolean }[];
  startsAt?: string;
  endsAt?: string;
  createdBy?: string;
  comment?: string;
  status?: { state: string } | string;
}

export interface ReportZone {
  site: string;
  zone: string;
  incidents: number;
  risk_max: number | null;
  risk_mean: number | null;
  loss_volume: number | null;
  loss_cost: number | null;
  unit: string | null;
  currency: string | null;
  trend: { day: string; incidents?: number; risk_max?: number | null; loss_volume?: number | null }[];
}

export interface PlannersReport {
  from: number | string;
  to: number | string;
  zones: ReportZone[];
}

export interface ServiceHealth {
  name: string;
  up: boolean;
  throughput_per_s: number | null;
  lag: number | null;
  batch_p50_ms: number | null;
  batch_p95_ms: number | null;
  quarantine_rate: number | null;
  model_versions: Record<string, string> | string[] | null;
}

export interface Pipeline {
  services: ServiceHealth[];
  quarantine_reasons: { reason: string; count: number }[];
  infra: Record<string, string>;
}

export interface LeakReport {
  id: string;
  ts: number | string;
  locality: string;
  remark: string;
  name: string;
  contact?: string | null;
  status: string;
  triage: { by: string; at: number | string; note: string } | null;
}

export interface Locality {
  locality: string;
  status: "green" | "amber" | "red";
  message: string;
}

export interface RateRow {
  site?: string;
  zone?: string;
  hour?: number;
  readings: number;
  anomalies: number;
  rate: number;
}

export interface PlaybackZone {
  site: string;
  zone: string;
  status: string;
  probability: number | null;
  open_episodes: number;
  incident_type?: string | null;
}

export interface Playback {
  from: number;
  to: number;
  step: number;
  frames: { ts: number; zones: PlaybackZone[] }[];
}

export interface ConsoleUser {
  name: string;
  role: Role;
  disabled?: boolean;
  created_at?: number;
  last_login_at?: number | null;
}

export interface AlertLogEntry {
  fingerprint: string;
  ts: number | string;
  kind: string;
  status?: string | null;
  author?: string | null;
  note?: string | null;
  labels?: Record<string, string> | null;
}
