import { describe, expect, it } from "vitest";
import { sparkPath, stepIndex, trendColumns, trendValues } from "./chartdata";
import { layoutSite, zoneLabel, NODE_W } from "./layout";
import { alertOrder, deviation } from "./stats";
import { severityRank } from "./status";
import { toMs } from "./format";
import { query } from "../api";
import { match } from "../router";

describe("trend columns", () => {
  it("aligns series, band and anomalies on one x axis in seconds", () => {
    const c = trendColumns(
      [
        { ts: 60_000, min: 1, max: 3, mean: 2 },
        { ts: 120_000, min: 1, max: 9, mean: 4 },
      ],
      [{ ts: 180_000, q10: 1, q50: 2, q90: 3, expected: 2, actual: null }],
      [125_000],
      60_000,
    );
    expect(c.x).toEqual([60, 120, 180]);
    expect(c.mean).toEqual([2, 4, null]);
    expect(c.q90).toEqual([null, null, 3]);
    expect(c.anomalies).toEqual([null, 9, null]);
  });
  it("drops anomalies outside every step", () => {
    expect(stepIndex([0, 60_000], -5, 60_000)).toBeNull();
    expect(stepIndex([0, 60_000], 200_000, 60_000)).toBeNull();
    expect(stepIndex([0, 60_000], 200_000, 0)).toBe(1);
    expect(stepIndex([], 5, 0)).toBeNull();
  });
  it("reads trend fields and draws sparklines in the box", () => {
    expect(trendValues([{ incidents: 2 }, { incidents: null }, {}], "incidents")).toEqual([2, 0, 0]);
    expect(sparkPath([0, 10], 100, 20)).toBe("M0.0,20.0 L100.0,0.0");
    expect(sparkPath([], 100, 20)).toBe("");
  });
});

describe("schematic layout", () => {
  it("labels zones without their site prefix", () => {
    expect(zoneLabel("riverside-dma1", "riverside")).toBe("dma1");
    expect(zoneLabel("central", "riverside")).toBe("central");
  });
  it("puts water zones first on a grid without overlaps", () => {
    const l = layoutSite("s", [
      { id: "s-gas", utility: "gas" },
      { id: "s-dma1", utility: "water" },
      { id: "s-bldg", utility: "energy" },
      { id: "s-dma2", utility: "water" },
    ]);
    expect(l.nodes.map((n) => n.id)).toEqual(["s-dma1", "s-dma2", "s-bldg", "s-gas"]);
    const boxes = new Set(l.nodes.map((n) => `${n.x},${n.y}`));
    expect(boxes.size).toBe(4);
    for (const n of l.nodes) {
      expect(n.x + NODE_W).toBeLessThanOrEqual(l.width);
      expect(n.y + n.h).toBeLessThanOrEqual(l.height);
    }
  });
});

describe("small helpers", () => {
  it("measures deviation in standard deviations", () => {
    expect(deviation(13, { mean: 10, std: 1.5 })).toBe(2);
    expect(deviation(13, { mean: 10, std: 0 })).toBeNull();
    expect(deviation(undefined, { mean: 10, std: 1 })).toBeNull();
  });
  it("orders alerts as an operator works them", () => {
    const a = (fp: string, status: string, severity: string, ack: unknown, startsAt: number) => ({ fp, status, severity, ack, startsAt });
    const out = alertOrder(
      [a("res", "resolved", "critical", null, 5), a("acked", "firing", "critical", { by: "x" }, 9), a("warn", "firing", "warning", null, 9), a("crit-old", "firing", "critical", null, 1), a("crit-new", "firing", "critical", null, 8)],
      severityRank,
      toMs,
    );
    expect(out.map((x) => x.fp)).toEqual(["crit-new", "crit-old", "warn", "acked", "res"]);
  });
  it("builds query strings from set parameters only", () => {
    expect(query({ a: "1", b: "", c: null, d: 2 })).toBe("?a=1&d=2");
    expect(query({})).toBe("");
    expect(query({ q: "a b&c" })).toBe("?q=a+b%26c");
  });
  it("matches routes and decodes parameters", () => {
    expect(match("/zones/:zone", "/zones/river%20side")).toEqual({ zone: "river side" });
    expect(match("/zones/:zone", "/zones")).toBeNull();
    expect(match("/alerts", "/history")).toBeNull();
  });
});
