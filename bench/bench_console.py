"""Console: time to the first meaningful paint of the overview in Debian's Chromium (headless, Playwright).

The real console (with the history and alerts workers it reads) runs on the local stack, on a bench-unique
topic prefix and a scratch database. A user signs in once; then the overview is opened ``--runs`` times,
each in a new browser context (cold: no HTTP cache, as a browser opening the console for the first time
in a shift) and ``--runs`` times more in one context (warm: the built assets cached, as after a reload).

"Meaningful" is the moment the page shows what an operator opens it for: the KPI cards and the network
schematic with every zone coloured by its status. An init script watches the DOM (MutationObserver) and
stamps ``performance.now()`` — milliseconds since the navigation started — when both are there, so the
measurement is taken in the page, without the driver's polling. First contentful paint (the browser's own
``paint`` entry) is reported beside it. (The live feed with 50 SSE clients is bench/bench_console_live.py.)
Writes bench/results/console.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from shared.settings import Settings  # noqa: E402
from tests.console_stack import chromium, running_console  # noqa: E402

USER, PASSWORD = "bench-viewer", "bench-viewer-password-0123"

WATCH = """
(() => {
  const done = () => {
    const kpis = document.querySelector('[data-testid="kpis"]');
    const zones = document.querySelectorAll('[data-testid="schematic"] [data-zone][data-status]');
    return kpis && zones.length > 0;
  };
  const stamp = () => {
    if (window.__meaningful === undefined && done()) window.__meaningful = performance.now();
  };
  new MutationObserver(stamp).observe(document, { childList: true, subtree: true, attributes: true });
})();
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 1),
        "p95_ms": round(_percentile(values, 0.95), 1),
        "min_ms": round(min(values), 1),
        "max_ms": round(max(values), 1),
    }


def _open_overview(page: Any, base: str) -> dict[str, float]:
    page.goto(f"{base}/", wait_until="commit")
    page.wait_for_function("window.__meaningful !== undefined", timeout=60_000)
    return page.evaluate(
        """() => ({
            meaningful: window.__meaningful,
            fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime ?? null,
            dom: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,
        })"""
    )


def _bundle() -> dict[str, Any]:
    assets = ROOT / "services/console/web/dist/assets"
    files = list(assets.glob("*.js")) + list(assets.glob("*.css"))
    raw = sum(f.stat().st_size for f in files)
    gz = sum(len(gzip.compress(f.read_bytes())) for f in files)
    return {"files": len(files), "bytes": raw, "gzip_bytes": gz}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="page loads per mode (cold, warm)")
    args = parser.parse_args()
    if not (ROOT / "services/console/web/dist/index.html").exists():
        print("the front end is not built: run make console-web", file=sys.stderr)
        return 2
    base_settings = Settings.from_env()
    with tempfile.TemporaryDirectory(prefix="fw-bench-console-") as tmp:
        with running_console(base_settings, Path(tmp) / "data", {USER: ("viewer", PASSWORD)}) as cs:
            with sync_playwright() as pw, chromium(pw) as browser:
                login = browser.new_context(viewport={"width": 1280, "height": 860})
                r = login.request.post(f"{cs.url}/api/login", data={"username": USER, "password": PASSWORD})
                if r.status != 200:
                    print(f"login failed: {r.status} {r.text()}", file=sys.stderr)
                    return 1
                state = login.storage_state()
                login.close()
                cold: list[dict[str, float]] = []
                for _ in range(args.runs):
                    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, storage_state=state)
                    ctx.add_init_script(WATCH)
                    cold.append(_open_overview(ctx.new_page(), cs.url))
                    ctx.close()
                ctx = browser.new_context(viewport={"width": 1280, "height": 860}, storage_state=state)
                ctx.add_init_script(WATCH)
                page = ctx.new_page()
                _open_overview(page, cs.url)  # fills the HTTP cache
                warm = [_open_overview(page, cs.url) for _ in range(args.runs)]
                ctx.close()
    result = {
        "bench": "console",
        "what": "overview: navigation start → KPIs and the schematic with every zone coloured (in-page stamp)",
        "browser": "Debian chromium, headless, Playwright " + _playwright_version(),
        "runs_per_mode": args.runs,
        "cold_meaningful": _summary([c["meaningful"] for c in cold]),
        "cold_first_contentful_paint": _summary([c["fcp"] for c in cold if c["fcp"] is not None]),
        "warm_meaningful": _summary([w["meaningful"] for w in warm]),
        "warm_first_contentful_paint": _summary([w["fcp"] for w in warm if w["fcp"] is not None]),
        "bundle": _bundle(),
        "machine_load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = ROOT / "bench" / "results" / "console.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _playwright_version() -> str:
    from importlib.metadata import version

    return version("playwright")


if __name__ == "__main__":
    raise SystemExit(main())
