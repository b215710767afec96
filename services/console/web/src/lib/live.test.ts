import { describe, expect, it } from "vitest";
import { initialLive, liveReducer, MAX_ANOMALIES, MAX_POPUPS, mergeZone, parseEventData, toLiveAlert, type LiveAction, type LiveState } from "./live";

const NOW = 1_765_000_000_000;

function alertRecord(fp: string, status: string, severity: string, extra: Record<string, unknown> = {}) {
  return {
    fingerprint: fp,
    status,
    labels: { alertname: "ZoneIncidentRisk", severity, site: "riverside", zone: "riverside-dma1" },
    annotations: { summary: `leak likely in ${fp}` },
    starts_at: NOW - 1000,
    updated_at: NOW,
    ...extra,
  };
}

function run(actions: LiveAction[], state: LiveState = initialLive): LiveState {
  return actions.reduce(liveReducer, state);
}

const ev = (event: string, data: unknown): LiveAction => ({ type: "event", event, data, now: NOW });

describe("live reducer", () => {
  it("is connected after hello and disconnected after an error", () => {
    const s = run([ev("hello", {})]);
    expect(s.connected).toBe(true);
    expect(run([{ type: "closed" }], s).connected).toBe(false);
  });

  it("pops up a new critical firing alert once", () => {
    const s = run([ev("alert", alertRecord("a1", "firing", "critical")), ev("alert", alertRecord("a1", "firing", "critical"))]);
    expect(s.popups.map((p) => p.fingerprint)).toEqual(["a1"]);
    expect(s.popups[0]?.summary).toBe("leak likely in a1");
    expect(s.popups[0]?.zone).toBe("riverside-dma1");
    expect(s.alertVersion).toBe(2);
  });

  it("does not pop up warnings, resolved alerts or alerts that started before the console was opened", () => {
    const s = run([
      ev("hello", {}),
      ev("alert", alertRecord("w", "firing", "warning")),
      ev("alert", alertRecord("r", "resolved", "critical")),
      ev("alert", alertRecord("old", "firing", "critical", { starts_at: NOW - 2 * 3_600_000 })),
    ]);
    expect(s.popups).toEqual([]);
    expect(s.alertVersion).toBe(3);
    expect(s.since).toBe(NOW);
  });

  it("reads the start time of the list shape (RFC 3339) too", () => {
    const a = toLiveAlert({ fingerprint: "x", startsAt: "2026-12-04T10:00:00Z", labels: {}, annotations: {} }, NOW);
    expect(a?.startsAt).toBe(Date.UTC(2026, 11, 4, 10));
  });

  it("removes the popup when the alert resolves, and pops up again when it fires anew", () => {
    let s = run([ev("alert", alertRecord("a", "firing", "critical")), ev("alert", alertRecord("a", "resolved", "critical"))]);
    expect(s.popups).toEqual([]);
    expect(s.firing.a).toBeUndefined();
    s = run([ev("alert", alertRecord("a", "firing", "critical"))], s);
    expect(s.popups).toHaveLength(1);
  });

  it("keeps at most MAX_POPUPS, newest first, and dismisses by fingerprint", () => {
    const actions = Array.from({ length: MAX_POPUPS + 2 }, (_, i) => ev("alert", alertRecord(`f${i}`, "firing", "critical")));
    let s = run(actions);
    expect(s.popups).toHaveLength(MAX_POPUPS);
    expect(s.popups[0]?.fingerprint).toBe(`f${MAX_POPUPS + 1}`);
    s = run([{ type: "dismiss", fingerprint: `f${MAX_POPUPS + 1}` }], s);
    expect(s.popups.map((p) => p.fingerprint)).not.toContain(`f${MAX_POPUPS + 1}`);
  });

  it("reads the console's list shape too (severity at the top level)", () => {
    const a = toLiveAlert({ fingerprint: "x", status: "firing", severity: "critical", alertname: "Leak", labels: {}, annotations: {} }, NOW);
    expect(a).toMatchObject({ severity: "critical", alertname: "Leak", at: NOW });
    expect(toLiveAlert({ status: "firing" }, NOW)).toBeNull();
    expect(toLiveAlert("junk", NOW)).toBeNull();
  });

  it("keeps the newest risk per zone and ignores older records", () => {
    const s = run([
      ev("risk", { zone: "z1", probability: 0.9, incident_type: "leak", ts: 200 }),
      ev("risk", { zone: "z1", probability: 0.1, incident_type: "normal", ts: 100 }),
    ]);
    expect(s.zones.z1).toMatchObject({ probability: 0.9, incident_type: "leak", ts: 200 });
  });

  it("keeps a bounded list of recent anomalies, newest first", () => {
    const actions = Array.from({ length: MAX_ANOMALIES + 5 }, (_, i) => ev("anomaly", { sensor_id: `s${i}`, zone: "z", site: "x", score: i, ts: i }));
    const s = run(actions);
    expect(s.anomalies).toHaveLength(MAX_ANOMALIES);
    expect(s.anomalies[0]?.sensor_id).toBe(`s${MAX_ANOMALIES + 4}`);
  });

  it("counts every event kind and survives malformed data", () => {
    const s = run([ev("aggregate", {}), ev("aggregate", {}), ev("alert", null), ev("risk", 42), ev("anomaly", [])]);
    expect(s.counts).toEqual({ aggregate: 2, alert: 1, risk: 1, anomaly: 1 });
    expect(s.popups).toEqual([]);
    expect(parseEventData("{bad")).toBeNull();
    expect(parseEventData('{"a":1}')).toEqual({ a: 1 });
  });

  it("raises a zone to at risk from a live risk record and lowers it back", () => {
    const zone = { status: "normal", probability: 0.1, incident_type: "normal" };
    expect(mergeZone(zone, { probability: 0.95, incident_type: "leak", ts: 1 }).status).toBe("at_risk");
    expect(mergeZone({ ...zone, status: "at_risk" }, { probability: 0.2, incident_type: "normal", ts: 1 }).status).toBe("normal");
    expect(mergeZone({ ...zone, status: "anomalous" }, { probability: 0.2, incident_type: "normal", ts: 1 }).status).toBe("anomalous");
    expect(mergeZone(zone, undefined)).toBe(zone);
  });
});
