"""The console in a real headless Chromium (Debian's, driven by Playwright from PyPI) against real history,
alerts and console workers on the real stack: an operator logs in, sees a simulated incident arrive live
as an alert without a reload, acknowledges it with a note, and finds it in the history; a viewer cannot
acknowledge; the public page shows a locality's status and a leak report sent there reaches the
operators' list. Every screen is photographed at a desktop and a phone size under test-artefacts/console/."""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from shared.cache import Cache
from shared.settings import Settings
from tests.console_stack import ConsoleStack, chromium, run_sync, running_console
from tests.helpers import ROOT, produce
from tests.history_helpers import reading

pytestmark = pytest.mark.timeout(600)

ARTEFACTS = ROOT / "test-artefacts" / "console"
PASSWORDS = {"otto": "operator-password-0123", "vera": "viewer-password-0123", "ada": "admin-password-0123"}
ROLES = {"otto": "operator", "vera": "viewer", "ada": "admin"}
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
SITE, ZONE, SENSOR = "riverside", "riverside-dma1", "riverside-dma1-pipe01"
WAIT_MS = 60_000  # a bound on waits for the pipeline (risk → alerts → topic → console → browser), not a timing
expect.set_options(timeout=WAIT_MS)


async def _seed(settings: Settings) -> None:
    """A little recent past for the screens: readings' aggregates, anomalies and risk, through the topics the
    services write (history keeps them), and the zone/sensor state in Redis the way the forecaster and detector
    leave it."""
    now = int(time.time() * 1000) // 60_000 * 60_000
    aggregates, anomalies, risks = [], [], []
    readings = [
        (
            SENSOR.encode(),
            reading(
                SENSOR,
                now - (180 - k) * 60_000,
                {
                    "flow": 40.0 + 10 * math.sin(k / 15) + (35.0 if 150 <= k < 170 else 0.0),
                    "pressure": 3.1 - 0.004 * (k % 30),
                },
                zone=ZONE,
                site=SITE,
            ),
        )
        for k in range(180)
    ]
    for k in range(180):  # three hours of minute windows for two zones
        start = now - (180 - k) * 60_000
        for zone, bad in ((ZONE, 150 <= k < 170), ("riverside-dma2", False)):
            aggregates.append(
                (
                    f"{SITE}/{zone}/water".encode(),
                    {
                        "window_start": start,
                        "window_end": start + 60_000,
                        "site": SITE,
                        "zone": zone,
                        "utility": "water",
                        "count": 12,
                        "anomaly_count": 3 if bad else 0,
                        "metrics": {"flow": {"mean": 40.0 + (k % 20), "min": 35.0, "max": 60.0}},
                    },
                )
            )
    for k in range(150, 170, 2):
        ts = now - (180 - k) * 60_000
        anomalies.append(
            (
                SENSOR.encode(),
                {
                    "sensor_id": SENSOR,
                    "ts": ts,
                    "site": SITE,
                    "zone": ZONE,
                    "utility": "water",
                    "asset": "pipe",
                    "score": 0.9,
                    "threshold": 0.5,
                    "model_version": "test-1",
                    "reason": "flow 60 % above the usual for this hour",
                    "top_metrics": [{"metric": "flow", "contribution": 0.8}],
                    "values": {"flow": 95.0},
                    "severity": "warning",
                },
            )
        )
    for k in range(0, 180, 5):
        ts = now - (180 - k) * 60_000
        p = 0.85 if 150 <= k < 170 else 0.05
        risks.append(
            (
                ZONE.encode(),
                {
                    "site": SITE,
                    "zone": ZONE,
                    "utility": "water",
                    "ts": ts,
                    "horizon_s": 900,
                    "probability": p,
                    "incident_type": "leak" if p > 0.5 else "normal",
                    "forecast": {"flow": {"q10": 35.0, "q50": 45.0, "q90": 55.0, "expected": 45.0, "actual": 44.0}},
                    "loss": {
                        "volume": 12.5,
                        "cost": 30.0,
                        "unit": "m3",
                        "currency": "EUR",
                        "ongoing": p > 0.5,
                        "since_ms": now - 30 * 60_000,
                    },
                    "model_version": "test-1",
                },
            )
        )
    await produce(settings, "readings.clean", readings)
    await produce(settings, "aggregates", aggregates)
    await produce(settings, "anomalies", anomalies)
    await produce(settings, "risk", risks)
    cache = Cache(settings.redis_url, prefix=settings.topic_prefix)
    try:
        await cache.set_many(
            "risk",
            {
                "riverside-dma3": {
                    "site": SITE,
                    "zone": "riverside-dma3",
                    "probability": 0.82,
                    "incident_type": "burst",
                    "ts": now,
                },
                "hillcrest-dma2": {
                    "site": "hillcrest",
                    "zone": "hillcrest-dma2",
                    "probability": 0.1,
                    "incident_type": "normal",
                    "ts": now,
                },
            },
        )
        await cache.set_many(
            "score",
            {SENSOR: {"sensor_id": SENSOR, "score": 0.9, "threshold": 0.5, "is_anomaly": True, "ts": now}},
        )
    finally:
        await cache.close()


@pytest.fixture(scope="module")
def console(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    """history + alerts + console on their own topic prefix and scratch database, with three users."""
    if not (ROOT / "services/console/web/dist/index.html").exists():
        pytest.fail("the console's front end is not built: run make console-web (make test does)", pytrace=False)
    users = {name: (role, PASSWORDS[name]) for name, role in ROLES.items()}
    with running_console(stack, tmp_path_factory.mktemp("console") / "data", users) as cs:
        run_sync(_seed(cs.settings))
        yield cs


@pytest.fixture(scope="module")
def browser(console: ConsoleStack) -> Iterator[Any]:
    with sync_playwright() as pw, chromium(pw) as b:
        yield b


@pytest.fixture
def new_page(browser: Any, console: ConsoleStack) -> Iterator[Any]:
    contexts = []

    def make(viewport: dict[str, int] = DESKTOP) -> Page:
        ctx = browser.new_context(viewport=viewport, base_url=console.url)
        ctx.set_default_timeout(WAIT_MS)
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()


def login(page: Page, user: str) -> None:
    page.goto("/")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("user")).to_contain_text(user)


def shot(page: Page, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _risk(zone: str, probability: float) -> dict[str, Any]:
    return {
        "site": SITE,
        "zone": zone,
        "utility": "water",
        "ts": int(time.time() * 1000),
        "horizon_s": 900,
        "probability": probability,
        "incident_type": "leak",
        "model_version": "test-1",
    }


def test_an_operator_sees_an_incident_live_acknowledges_it_and_finds_it_in_history(console, new_page) -> None:
    page = new_page()
    login(page, "otto")
    page.get_by_role("link", name="Alerts", exact=True).click()
    expect(page.locator('[data-screen="alerts"]')).to_be_visible()
    expect(page.get_by_test_id("live-dot")).to_have_class(re.compile(r"\bon\b"))
    # Anything kept in the page's memory survives only if the page is never reloaded.
    page.evaluate("window.__sameDocument = 'yes'")
    zone = "riverside-dma4"
    run_sync(produce(console.settings, "risk", [(zone.encode(), _risk(zone, 0.95))]))

    popup = page.get_by_test_id("alert-popup").filter(has_text=zone)
    expect(popup).to_be_visible()
    expect(popup).to_contain_text("CRITICAL")
    card = page.get_by_test_id("alert-card").filter(has_text=zone)
    expect(card).to_be_visible()
    assert page.evaluate("window.__sameDocument") == "yes"
    shot(page, "alerts-live-popup-desktop")

    card.get_by_role("button", name="Acknowledge").click()
    form = card.get_by_role("form", name="ack")
    form.get_by_label("Note").fill("crew sent to the valve chamber")
    form.get_by_role("button", name="Acknowledge").click()
    ack = card.get_by_test_id("ack-info")
    expect(ack).to_contain_text("otto")
    expect(ack).to_contain_text("crew sent to the valve chamber")
    expect(card.get_by_role("button", name="Acknowledge")).to_have_count(0)

    # The history keeps the acknowledgement: its alert log lists who acknowledged and the note.
    page.get_by_role("link", name="History", exact=True).click()
    log = page.get_by_test_id("alert-log")
    expect(log.filter(has_text="crew sent to the valve chamber")).to_be_visible()
    expect(log).to_contain_text("otto")


def test_a_viewer_cannot_acknowledge(console, new_page) -> None:
    zone = "riverside-dma5"
    run_sync(produce(console.settings, "risk", [(zone.encode(), _risk(zone, 0.9))]))
    page = new_page()
    login(page, "vera")
    page.goto("/alerts")
    card = page.get_by_test_id("alert-card").filter(has_text=zone)
    expect(card).to_be_visible()
    expect(card.get_by_role("button", name="Acknowledge")).to_have_count(0)
    expect(page.get_by_role("button", name="Comment")).to_have_count(0)
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    # Not only hidden: the API refuses the viewer's session too (with a valid CSRF token).
    fp = card.get_attribute("data-fingerprint")
    status = page.evaluate(
        """async (fp) => {
            const me = await (await fetch('/api/me')).json();
            const r = await fetch(`/api/alerts/${fp}/ack`, {method: 'POST', headers: {'Content-Type': 'application/json',
                'X-CSRF-Token': me.csrf}, body: JSON.stringify({note: 'not mine to ack'})});
            return r.status;
        }""",
        fp,
    )
    assert status == 403
    shot(page, "alerts-viewer-desktop")


def test_the_public_sees_their_area_and_a_leak_report_reaches_the_operators(console, new_page) -> None:
    page = new_page(PHONE)
    page.goto("/public")
    locality = page.locator(f'[data-locality="{SITE}"]')
    expect(locality).to_be_visible()
    assert locality.get_attribute("data-light") in ("green", "amber", "red")
    expect(locality.locator("p")).not_to_be_empty()
    expect(page.get_by_text(SENSOR)).to_have_count(0)  # nothing internal on the public page
    shot(page, "public-phone")

    remark = f"water bubbling up at the corner of Mill Street {uuid.uuid4().hex[:6]}"
    page.get_by_role("button", name="Send report").click()
    expect(page.get_by_text("Please give your name.")).to_be_visible()  # validated before sending
    page.get_by_label("Your name").fill("Jo Public")
    page.get_by_label("Where").select_option(SITE)
    page.get_by_label("What did you see?").fill(remark)
    page.get_by_role("button", name="Send report").click()
    expect(page.get_by_test_id("report-sent")).to_contain_text("Thank you")
    shot(page, "public-report-sent-phone")

    operator = new_page()
    login(operator, "otto")
    operator.get_by_role("link", name="Public reports").click()
    # The report travels the reports topic into the history store; the list refreshes itself.
    item = operator.get_by_test_id("leak-reports").locator("li").filter(has_text=remark)
    expect(item).to_be_visible()
    expect(item).to_contain_text(SITE)
    expect(item).to_contain_text("Jo Public")
    shot(operator, "public-reports-desktop")


SCREENS = [
    ("overview", "/", "overview"),
    ("zone", f"/zones/{ZONE}", "zone"),
    ("sensor", f"/sensors/{SENSOR}", "sensor"),
    ("alerts", "/alerts", "alerts"),
    ("history", "/history", "history"),
    ("report", "/report", "report"),
    ("pipeline", "/pipeline", "pipeline"),
    ("reports", "/reports", "reports"),
    ("admin", "/admin", "admin"),
]


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_screen_renders_without_errors_and_fits_the_viewport(console, new_page, size: str) -> None:
    page = new_page(DESKTOP if size == "desktop" else PHONE)
    page.goto("/")
    shot(page, f"login-{size}")
    login(page, "ada")
    for name, path, screen in SCREENS:
        page.goto(path)
        root = page.locator(f'[data-screen="{screen}"]')
        expect(root).to_be_visible()
        expect(page.get_by_text("Loading…")).to_have_count(0)
        errors = page.locator(".error").all_inner_texts()
        assert errors == [], f"{name}: {errors}"
        # Responsive: nothing wider than the viewport (wide tables and charts scroll inside their panels).
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} is {overflow}px wider than the {size} viewport"
        shot(page, f"{name}-{size}")
    page.goto("/public")
    expect(page.get_by_test_id("localities").locator("li").first).to_be_visible()
    shot(page, f"public-{size}")


def test_the_overview_shows_the_network_coloured_by_status(console, new_page) -> None:
    page = new_page()
    login(page, "vera")
    expect(page.get_by_test_id("kpis")).to_be_visible()
    schematic = page.get_by_test_id("schematic")
    expect(schematic.locator("[data-site]")).to_have_count(4)
    expect(schematic.locator('[data-zone="riverside-dma3"]')).to_have_attribute("data-status", "at_risk")
    expect(schematic.locator(f'[data-zone="{ZONE}"]')).to_have_attribute("data-status", re.compile("anomalous|at_risk"))
    expect(schematic.locator('[data-zone="hillcrest-dma2"]')).to_have_attribute("data-status", "normal")
    schematic.locator('[data-zone="riverside-dma3"]').click()
    expect(page.locator('[data-screen="zone"]')).to_contain_text("riverside-dma3")
