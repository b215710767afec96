import { describe, expect, it } from "vitest";
import { asStatus, lightColour, rateColour, severityColour, severityRank, statusColour, statusLabel, STATUS_COLOURS, worstStatus } from "./status";

describe("status colouring", () => {
  it("gives each zone status its colour and unknown values the grey", () => {
    expect(statusColour("normal")).toBe(STATUS_COLOURS.normal);
    expect(statusColour("at_risk")).toBe(STATUS_COLOURS.at_risk);
    expect(statusColour("bogus")).toBe(STATUS_COLOURS.unknown);
    expect(statusColour(undefined)).toBe(STATUS_COLOURS.unknown);
    expect(new Set(Object.values(STATUS_COLOURS)).size).toBe(4);
  });
  it("labels statuses in words", () => {
    expect(statusLabel("at_risk")).toBe("at risk");
    expect(statusLabel(null)).toBe("no data");
    expect(asStatus("anomalous")).toBe("anomalous");
  });
  it("takes the worst status of a site's zones", () => {
    expect(worstStatus(["normal", "anomalous", "normal"])).toBe("anomalous");
    expect(worstStatus(["normal", "at_risk", "anomalous"])).toBe("at_risk");
    expect(worstStatus([undefined, "normal"])).toBe("normal");
    expect(worstStatus([])).toBe("unknown");
  });
  it("orders and colours severities", () => {
    expect(severityRank("critical")).toBeGreaterThan(severityRank("warning"));
    expect(severityRank("warning")).toBeGreaterThan(severityRank("info"));
    expect(severityColour("critical")).not.toBe(severityColour("warning"));
    expect(severityColour("something")).toBe(severityColour("info"));
  });
  it("maps traffic lights, grey for an unknown one", () => {
    expect(lightColour("red")).toBe("#c62828");
    expect(lightColour("purple")).toBe(STATUS_COLOURS.unknown);
  });
  it("ramps heatmap cells from pale to red relative to the maximum", () => {
    expect(rateColour(0, 0.2)).toBe("rgb(255, 247, 236)");
    expect(rateColour(0.2, 0.2)).toBe("rgb(198, 40, 40)");
    expect(rateColour(0.1, 0.2)).toBe("rgb(239, 143, 0)");
    expect(rateColour(5, 0.2)).toBe("rgb(198, 40, 40)");
    expect(rateColour(null)).toBe("#e6e8eb");
  });
});
