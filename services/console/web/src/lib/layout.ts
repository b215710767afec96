// Geometry of the network schematic: pure so that it is tested without a browser.

export interface NodeBox {
  id: string;
  label: string;
  utility: string;
  x: number;
  y: number;
  w: number;
  h: number;
}

export interface SiteLayout {
  width: number;
  height: number;
  hub: { x: number; y: number };
  nodes: NodeBox[];
}

export const NODE_W = 96;
export const NODE_H = 40;
const GAP_X = 12;
const GAP_Y = 22;
const TOP = 56;

/** Short label of a zone inside its site: "riverside-dma1" in site "riverside" → "dma1". */
export function zoneLabel(zoneId: string, siteId: string): string {
  return zoneId.startsWith(`${siteId}-`) ? zoneId.slice(siteId.length + 1) : zoneId;
}

const UTILITY_ORDER = ["water", "pumps", "quality", "energy", "gas"];

/** Zones of one site on a grid of `columns`, water first (the hub feeds them), then other utilities. */
export function layoutSite(siteId: string, zones: { id: string; utility: string }[], columns = 3): SiteLayout {
  const ordered = [...zones].sort((a, b) => {
    const ua = UTILITY_ORDER.indexOf(a.utility);
    const ub = UTILITY_ORDER.indexOf(b.utility);
    return (ua < 0 ? 99 : ua) - (ub < 0 ? 99 : ub) || a.id.localeCompare(b.id);
  });
  const cols = Math.max(1, Math.min(columns, ordered.length || 1));
  const width = cols * NODE_W + (cols + 1) * GAP_X;
  const nodes = ordered.map((z, i) => ({
    id: z.id,
    label: zoneLabel(z.id, siteId),
    utility: z.utility,
    x: GAP_X + (i % cols) * (NODE_W + GAP_X),
    y: TOP + Math.floor(i / cols) * (NODE_H + GAP_Y),
    w: NODE_W,
    h: NODE_H,
  }));
  const rows = Math.ceil(ordered.length / cols);
  const height = TOP + rows * (NODE_H + GAP_Y);
  return { width, height, hub: { x: width / 2, y: 24 }, nodes };
}
