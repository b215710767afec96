import { Link, navigate } from "../router";
import { layoutSite } from "../lib/layout";
import { statusColour, statusLabel, worstStatus } from "../lib/status";
import { formatPercent, humanize } from "../lib/format";
import type { Network } from "../types";

export interface ZoneLook {
  status: string;
  probability?: number | null;
  incident_type?: string | null;
}

const UTILITY_MARK: Record<string, string> = { water: "W", energy: "E", gas: "G", pumps: "P", quality: "Q" };

/** Sites as cards, each an SVG of its zones piped from the site's hub, coloured by status. */
export function Schematic({ network, zones, linkZones = true }: { network: Network; zones: Record<string, ZoneLook>; linkZones?: boolean }) {
  return (
    <div className="schematic" data-testid="schematic">
      {network.sites.map((site) => {
        const layout = layoutSite(site.id, site.zones);
        const worst = worstStatus(site.zones.map((z) => zones[z.id]?.status));
        return (
          <figure key={site.id} className="site-card" data-site={site.id}>
            <svg viewBox={`0 0 ${layout.width} ${layout.height}`} role="group" aria-label={`site ${site.id}`}>
              <circle cx={layout.hub.x} cy={layout.hub.y} r={12} fill={statusColour(worst)} />
              <text x={layout.hub.x + 18} y={layout.hub.y + 5} className="site-name">
                {site.id}
              </text>
              {layout.nodes.map((n) => (
                <path
                  key={`p-${n.id}`}
                  d={`M${layout.hub.x},${layout.hub.y + 12} V${n.y - 10} H${n.x + n.w / 2} V${n.y}`}
                  className="pipe"
                />
              ))}
              {layout.nodes.map((n) => {
                const z = zones[n.id];
                const status = z?.status ?? "unknown";
                const title = `${n.id}: ${statusLabel(status)}${
                  z?.probability !== null && z?.probability !== undefined
                    ? `, risk ${formatPercent(z.probability)} ${humanize(z.incident_type)}`
                    : ""
                }`;
                const body = (
                  <g className="zone-node" data-zone={n.id} data-status={status}>
                    <title>{title}</title>
                    <rect x={n.x} y={n.y} width={n.w} height={n.h} rx={6} fill={statusColour(status)} />
                    <text x={n.x + 8} y={n.y + 17} className="zone-label">
                      {n.label}
                    </text>
                    <text x={n.x + 8} y={n.y + 32} className="zone-sub">
                      {UTILITY_MARK[n.utility] ?? "·"} {statusLabel(status)}
                    </text>
                  </g>
                );
                return linkZones ? (
                  <a
                    key={n.id}
                    href={`/zones/${encodeURIComponent(n.id)}`}
                    aria-label={title}
                    onClick={(e) => {
                      e.preventDefault();
                      navigate(`/zones/${encodeURIComponent(n.id)}`);
                    }}
                  >
                    {body}
                  </a>
                ) : (
                  <g key={n.id}>{body}</g>
                );
              })}
            </svg>
            <figcaption>
              <Link to={`/history?site=${encodeURIComponent(site.id)}`}>{site.id}</Link> — {statusLabel(worst)}
            </figcaption>
          </figure>
        );
      })}
    </div>
  );
}
