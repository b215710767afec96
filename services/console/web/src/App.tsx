import { useEffect, useState, type ReactNode } from "react";
import { api, onUnauthorized, setCsrf, ApiError } from "./api";
import { LiveContext, SessionContext, useLiveFeed, useLive, useSession } from "./hooks";
import { Link, match, navigate, useLocation } from "./router";
import { severityColour } from "./lib/status";
import { formatClock } from "./lib/format";
import type { Me, Role } from "./types";
import { Login } from "./screens/Login";
import { Overview } from "./screens/Overview";
import { ZoneScreen } from "./screens/Zone";
import { SensorScreen } from "./screens/Sensor";
import { Alerts } from "./screens/Alerts";
import { History } from "./screens/History";
import { Report } from "./screens/Report";
import { PipelineScreen } from "./screens/Pipeline";
import { PublicPage } from "./screens/Public";
import { LeakReports } from "./screens/LeakReports";
import { Admin } from "./screens/Admin";

interface NavItem {
  to: string;
  label: string;
  role: Role;
}

const NAV: NavItem[] = [
  { to: "/", label: "Overview", role: "viewer" },
  { to: "/alerts", label: "Alerts", role: "viewer" },
  { to: "/history", label: "History", role: "viewer" },
  { to: "/report", label: "Planners' report", role: "viewer" },
  { to: "/pipeline", label: "Pipeline", role: "viewer" },
  { to: "/reports", label: "Public reports", role: "operator" },
  { to: "/admin", label: "Admin", role: "admin" },
];

export function App() {
  const { path } = useLocation();
  if (path === "/public" || path.startsWith("/public/")) return <PublicPage />;
  return <Console />;
}

function Console() {
  const [me, setMe] = useState<Me | null>(null);
  const [checked, setChecked] = useState(false);

  useEffect(() => {
    api
      .get<Me>("/api/me")
      .then((m) => {
        setCsrf(m.csrf);
        setMe(m);
      })
      .catch((e: unknown) => {
        if (!(e instanceof ApiError) || e.status !== 401) console.warn("session check failed", e);
      })
      .finally(() => setChecked(true));
    return onUnauthorized(() => setMe(null));
  }, []);

  const session = {
    me,
    setMe: (m: Me | null) => {
      setCsrf(m?.csrf ?? "");
      setMe(m);
    },
  };
  if (!checked) return <p className="muted center">Loading…</p>;
  return (
    <SessionContext.Provider value={session}>
      {me ? <Shell /> : <Login />}
    </SessionContext.Provider>
  );
}

function Shell() {
  const { me, setMe, can } = useSession();
  const feed = useLiveFeed(Boolean(me));
  const { path } = useLocation();
  const [menuOpen, setMenuOpen] = useState(false);

  const logout = async () => {
    try {
      await api.post("/api/logout");
    } finally {
      setMe(null);
      navigate("/");
    }
  };

  return (
    <LiveContext.Provider value={feed}>
      <div className="shell">
        <header className="topbar">
          <Link to="/" className="brand">
            flowwatch
          </Link>
          <button className="menu-toggle" aria-expanded={menuOpen} aria-controls="nav" onClick={() => setMenuOpen((o) => !o)}>
            Menu
          </button>
          <nav id="nav" className={menuOpen ? "open" : ""} onClick={() => setMenuOpen(false)}>
            {NAV.filter((n) => can(n.role)).map((n) => (
              <Link key={n.to} to={n.to} className={isActive(n.to, path) ? "active" : ""}>
                {n.label}
              </Link>
            ))}
          </nav>
          <div className="who">
            <span className={`live-dot ${feed.live.connected ? "on" : ""}`} title={feed.live.connected ? "live feed connected" : "live feed disconnected"} data-testid="live-dot" />
            <span className="user" data-testid="user">
              {me?.user.name} <small>({me?.user.role})</small>
            </span>
            <button className="link" onClick={() => void logout()}>
              Sign out
            </button>
          </div>
        </header>
        <Popups />
        <main className="content">
          <Routes path={path} />
        </main>
      </div>
    </LiveContext.Provider>
  );
}

function isActive(to: string, path: string): boolean {
  return to === "/" ? path === "/" || path.startsWith("/zones") || path.startsWith("/sensors") : path.startsWith(to);
}

function Routes({ path }: { path: string }): ReactNode {
  const { can } = useSession();
  let m: Record<string, string> | null;
  if (path === "/" || path === "/overview") return <Overview />;
  if ((m = match("/zones/:zone", path))) return <ZoneScreen zone={m.zone ?? ""} />;
  if ((m = match("/sensors/:id", path))) return <SensorScreen id={m.id ?? ""} />;
  if (path === "/alerts") return <Alerts />;
  if (path === "/history") return <History />;
  if (path === "/report") return <Report />;
  if (path === "/pipeline") return <PipelineScreen />;
  if (path === "/reports") return can("operator") ? <LeakReports /> : <Forbidden />;
  if (path === "/admin") return can("admin") ? <Admin /> : <Forbidden />;
  if (path === "/login") {
    navigate("/", true);
    return null;
  }
  return (
    <p>
      No such page. <Link to="/">Back to the overview</Link>
    </p>
  );
}

function Forbidden() {
  return <p className="error">Your role cannot see this page.</p>;
}

/** A new critical alert pops up wherever the operator is. */
function Popups() {
  const { live, dispatch } = useLive();
  if (live.popups.length === 0) return null;
  return (
    <div className="popups" role="alert" aria-live="assertive">
      {live.popups.map((p) => (
        <div key={p.fingerprint} className="popup" style={{ borderLeftColor: severityColour(p.severity) }} data-testid="alert-popup">
          <strong>
            {p.severity.toUpperCase()} · {p.alertname}
          </strong>
          <div>{p.summary || [p.site, p.zone].filter(Boolean).join(" / ")}</div>
          <small>{formatClock(p.at)} UTC</small>
          <div className="popup-actions">
            <Link
              to={`/alerts?fp=${encodeURIComponent(p.fingerprint)}`}
              onClick={() => dispatch({ type: "dismiss", fingerprint: p.fingerprint })}
            >
              Open
            </Link>
            <button className="link" onClick={() => dispatch({ type: "dismiss", fingerprint: p.fingerprint })}>
              Dismiss
            </button>
          </div>
        </div>
      ))}
    </div>
  );
}
