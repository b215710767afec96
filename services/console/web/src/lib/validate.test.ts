import { describe, expect, it } from "vitest";
import { hasErrors, isEmail, isPhone, parseDuration, validateLeakReport, validateLogin, validateSilence, validateUser } from "./validate";

const good = { name: "Ada", locality: "riverside", remark: "Water on the pavement", contact: "" };

describe("leak report form", () => {
  it("accepts a complete report, with or without contact", () => {
    expect(hasErrors(validateLeakReport(good, ["riverside"]))).toBe(false);
    expect(hasErrors(validateLeakReport({ ...good, contact: "ada@example.org" }, ["riverside"]))).toBe(false);
    expect(hasErrors(validateLeakReport({ ...good, contact: "+44 20 7946 0958" }, ["riverside"]))).toBe(false);
  });
  it("names each wrong field", () => {
    const e = validateLeakReport({ name: "  ", locality: "", remark: "x", contact: "nope" }, ["riverside"]);
    expect(Object.keys(e).sort()).toEqual(["contact", "locality", "name", "remark"]);
  });
  it("refuses a locality not offered and over-long fields", () => {
    expect(validateLeakReport({ ...good, locality: "atlantis" }, ["riverside"]).locality).toBeTruthy();
    expect(validateLeakReport({ ...good, name: "a".repeat(101) }, ["riverside"]).name).toBeTruthy();
    expect(validateLeakReport({ ...good, remark: "a".repeat(2001) }, ["riverside"]).remark).toBeTruthy();
  });
  it("recognises e-mail addresses and phone numbers", () => {
    expect(isEmail("a@b.co")).toBe(true);
    expect(isEmail("a@b")).toBe(false);
    expect(isPhone("(020) 7946-0958")).toBe(true);
    expect(isPhone("12")).toBe(false);
  });
});

describe("login and users", () => {
  it("needs both login fields", () => {
    expect(validateLogin({ username: "", password: "" })).toEqual({ username: expect.any(String), password: expect.any(String) });
    expect(hasErrors(validateLogin({ username: "otto", password: "pw" }))).toBe(false);
  });
  it("checks a new user like the API does", () => {
    expect(hasErrors(validateUser({ username: "otto", password: "0123456789", role: "operator" }))).toBe(false);
    expect(validateUser({ username: "o tto", password: "0123456789", role: "operator" }).username).toBeTruthy();
    expect(validateUser({ username: "otto", password: "short", role: "operator" }).password).toBeTruthy();
    expect(validateUser({ username: "otto", password: "0123456789", role: "root" }).role).toBeTruthy();
  });
});

describe("silences", () => {
  it("parses Alertmanager durations", () => {
    expect(parseDuration("30m")).toBe(1_800_000);
    expect(parseDuration("1h30m")).toBe(5_400_000);
    expect(parseDuration("2d")).toBe(172_800_000);
    expect(parseDuration("2 hours")).toBeNull();
    expect(parseDuration("0m")).toBeNull();
  });
  it("needs a matcher with a value, a sane duration and a reason", () => {
    const ok = { matchers: [{ name: "zone", value: "z1", isRegex: false }], duration: "2h", comment: "works" };
    expect(hasErrors(validateSilence(ok))).toBe(false);
    expect(validateSilence({ ...ok, matchers: [] }).matchers).toBeTruthy();
    expect(validateSilence({ ...ok, matchers: [{ name: "zone", value: "", isRegex: false }] }).matchers).toBeTruthy();
    expect(validateSilence({ ...ok, matchers: [{ name: "zone", value: "(", isRegex: true }] }).matchers).toBeTruthy();
    expect(validateSilence({ ...ok, duration: "45d" }).duration).toBeTruthy();
    expect(validateSilence({ ...ok, comment: " " }).comment).toBeTruthy();
  });
});
