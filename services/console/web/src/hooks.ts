import { createContext, useCallback, useContext, useEffect, useReducer, useRef, useState } from "react";
import { api, ApiError } from "./api";
import { initialLive, liveReducer, parseEventData, type LiveAction, type LiveState } from "./lib/live";
import type { Me, Role } from "./types";

export interface Loaded<T> {
  data: T | null;
  error: string | null;
  loading: boolean;
  reload: () => void;
}

/** GET a path (null: nothing to load); reloads when the path or `version` changes, keeps old data meanwhile. */
export function useApi<T>(path: string | null, version: unknown = 0): Loaded<T> {
  const [tick, setTick] = useState(0);
  const key = path === null ? null : `${path}|${String(version)}|${tick}`;
  const [state, setState] = useState<{ key: string | null; data: T | null; error: string | null }>({
    key: null,
    data: null,
    error: null,
  });
  useEffect(() => {
    if (path === null || key === null) return;
    const ctl = new AbortController();
    api
      .get<T>(path, ctl.signal)
      .then((data) => setState({ key, data, error: null }))
      .catch((e: unknown) => {
        if (ctl.signal.aborted) return;
        const message = e instanceof ApiError ? `${e.message} (HTTP ${e.status})` : String(e);
        setState((s) => ({ ...s, key, error: message }));
      });
    return () => ctl.abort();
  }, [path, key]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data: state.data, error: state.error, loading: key !== null && state.key !== key, reload };
}

/** Reload every `ms` while the page is visible. */
export function useInterval(callback: () => void, ms: number): void {
  const saved = useRef(callback);
  useEffect(() => {
    saved.current = callback;
  }, [callback]);
  useEffect(() => {
    const id = window.setInterval(() => {
      if (document.visibilityState === "visible") saved.current();
    }, ms);
    return () => window.clearInterval(id);
  }, [ms]);
}

export interface Session {
  me: Me | null;
  setMe: (me: Me | null) => void;
}

export const SessionContext = createContext<Session>({ me: null, setMe: () => undefined });

const RANK: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 };

export function roleAtLeast(role: Role | undefined | null, needed: Role): boolean {
  return role ? RANK[role] >= RANK[needed] : false;
}

export function useSession(): Session & { can: (role: Role) => boolean } {
  const s = useContext(SessionContext);
  return { ...s, can: (role: Role) => roleAtLeast(s.me?.user.role, role) };
}

export const LiveContext = createContext<{ live: LiveState; dispatch: (a: LiveAction) => void }>({
  live: initialLive,
  dispatch: () => undefined,
});

export function useLive() {
  return useContext(LiveContext);
}

const LIVE_EVENTS = ["hello", "anomaly", "risk", "alert", "aggregate", "sensor_event"];

/** The SSE connection while logged in; EventSource reconnects by itself after a drop. */
export function useLiveFeed(enabled: boolean): { live: LiveState; dispatch: (a: LiveAction) => void } {
  const [live, dispatch] = useReducer(liveReducer, initialLive);
  useEffect(() => {
    if (!enabled || typeof EventSource === "undefined") return;
    const es = new EventSource("/api/live", { withCredentials: true });
    es.onopen = () => dispatch({ type: "open" });
    es.onerror = () => dispatch({ type: "closed" });
    const handlers = LIVE_EVENTS.map((name) => {
      const h = (e: MessageEvent<string>) =>
        dispatch({ type: "event", event: name, data: parseEventData(e.data), now: Date.now() });
      es.addEventListener(name, h);
      return [name, h] as const;
    });
    return () => {
      handlers.forEach(([name, h]) => es.removeEventListener(name, h));
      es.close();
    };
  }, [enabled]);
  return { live, dispatch };
}
