"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright; no
browser is ever downloaded) against a real host (uvicorn, simulated transport, real Redis):
log in, pair by QR, memory, replay a dead letter, a wrong key, hostile text rendered as text.

Without ``/usr/bin/chromium`` (or Playwright) the module is skipped with the reason, unless
``WACLIENT_REQUIRE_BROWSER=1`` (CI), which makes that a failure. ``WACLIENT_DASHBOARD_SCREENSHOT=
path`` writes the README's screenshot."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_host_api import KEY, PHONE, make_settings, wait_ready
from test_webhooks_host import SECRET, WEBHOOKS, until
from webhook_receiver import proxy_url, receiver

from waclient.host import create_app
from waclient.host.testing import RunningServer, serve
from waclient.transports.simulated import SimulatedTransport

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOSTILE = "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"
REFRESH_MS = 5000


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


if (_reason := _missing_browser()) is not None:
    if os.environ.get("WACLIENT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"WACLIENT_REQUIRE_BROWSER=1 but {_reason}", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import BrowserContext, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    """One Chromium for the module, with a fresh user-data dir."""
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=ARGS, headless=True
        )
        yield context
        context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.clock.install()  # the refresh timer is advanced by the test, never waited for
    yield page
    page.close()
    assert errors == []


@contextmanager
def host(
    tmp_path: Path, redis_url: str | None, sim: SimulatedTransport | None = None
) -> Iterator[Any]:
    settings = make_settings(tmp_path, redis_url, **WEBHOOKS)
    with (
        serve(create_app(settings, transport=sim)) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": KEY}, timeout=30) as api,
    ):
        if sim is None or sim.auto_connect:
            wait_ready(api)
        yield srv, api


def login(page: Page, srv: RunningServer, key: str = KEY) -> None:
    page.goto(f"{srv.url}/dashboard")
    page.fill("#key", key)
    page.click("#login button")
    if key == KEY:
        expect(page.locator("body")).to_have_attribute("data-refreshes", "1")


def refresh(page: Page) -> None:
    """Advance the page's clock to its next refresh and wait until that refresh is shown."""
    done = int(page.locator("body").get_attribute("data-refreshes") or 0)
    page.clock.run_for(REFRESH_MS)
    expect(page.locator("body")).to_have_attribute("data-refreshes", str(done + 1))


def test_the_page_is_served_without_a_key_under_a_strict_policy(
    tmp_path: Path, redis_url: str
) -> None:
    with host(tmp_path, redis_url) as (srv, _):
        for path in ("/dashboard", "/dashboard/app.js", "/dashboard/app.css"):
            r = httpx.get(f"{srv.url}{path}")
            assert r.status_code == 200, path
            assert r.headers["content-security-policy"].startswith("default-src 'self'")
            assert r.headers["x-frame-options"] == "DENY"
        assert "<script>" not in httpx.get(f"{srv.url}/dashboard").text.replace(
            '<script src="/dashboard/app.js" defer></script>', ""
        )


def test_the_policy_refuses_inline_script(browser: BrowserContext, tmp_path: Path) -> None:
    with host(tmp_path, None) as (srv, _):
        page = browser.new_page()
        refused: list[str] = []
        page.on("console", lambda msg: refused.append(msg.text))
        page.goto(f"{srv.url}/dashboard")
        page.evaluate(
            "() => { const s = document.createElement('script');"
            " s.textContent = 'window.ran = 1'; document.body.append(s); }"
        )
        assert page.evaluate("window.ran") is None
        assert any("Content Security Policy" in text for text in refused)
        page.close()


def test_a_wrong_key_shows_an_error(page: Page, tmp_path: Path, redis_url: str) -> None:
    with host(tmp_path, redis_url) as (srv, _):
        login(page, srv, "not-the-key-0123456789")
        expect(page.locator("#login-error")).to_contain_text("wrong API key")
        expect(page.locator("#panels")).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('waclient-api-key')") is None


def test_pair_by_qr_then_paired(page: Page, tmp_path: Path, redis_url: str) -> None:
    sim = SimulatedTransport(auto_connect=False)  # a session waiting to be paired
    sim.latest_qr = "2@first,code,for,pairing"
    with host(tmp_path, redis_url, sim) as (srv, api):
        login(page, srv)
        qr = page.locator("#qr")
        expect(qr).to_be_visible()
        first = qr.get_attribute("src")
        assert first is not None and first.startswith("blob:")
        sim.latest_qr = "2@second,code,after,rotation"  # the code rotates
        refresh(page)
        expect(qr).not_to_have_attribute("src", first)
        assert page.evaluate("document.getElementById('qr').naturalWidth") > 0
        page.fill("#phone", PHONE)  # or by pair code
        page.click("#pair-form button")
        expect(page.locator("#pair-code")).to_contain_text("Type this code on the phone: ")
        sim.latest_qr = None
        _off_the_page_loop(sim.connect())  # the phone scanned it: pair success
        wait_ready(api)
        refresh(page)
        expect(page.locator("#qr")).to_be_hidden()
        expect(page.locator("#qr-note")).to_have_text("Paired.")
        expect(page.locator("#session-state")).to_contain_text("connected")


def test_memory_and_the_watch_sections(page: Page, tmp_path: Path, redis_url: str) -> None:
    with host(tmp_path, redis_url) as (srv, api):
        login(page, srv)
        expect(page.locator("#memory-now")).to_contain_text("rss")
        expect(page.locator("#memory-now")).to_contain_text("hard limit")
        expect(page.locator("#redis-state")).to_contain_text("configured")
        if api.get("/health/memory/trend").status_code == 404:
            expect(page.locator("#chart")).to_contain_text("not available on this host")
        else:
            expect(page.locator("#verdict")).to_have_text(
                api.get("/health/memory/trend").json()["status"]
            )
        if api.get("/health/runs").status_code == 404:
            expect(page.locator("#runs-body")).to_contain_text("not available on this host")


def test_replay_a_dead_letter_and_hostile_text_is_text(
    page: Page, tmp_path: Path, redis_url: str
) -> None:
    with receiver(SECRET) as (rec, proxy), host(tmp_path, redis_url) as (srv, api):
        rec.mode = "500"
        body = {"url": proxy_url(proxy), "secret": SECRET, "events": ["message.received"]}
        endpoint = api.post("/webhooks", json=body).json()["id"]
        api.post("/debug/inbound", json={"from": PHONE, "text": HOSTILE})
        until(lambda: _stats(api)["dead_letters"] == 1)
        job = {"to": PHONE, "text": HOSTILE, "cron": "0 9 * * *", "tz": "UTC"}
        assert api.post("/scheduled", json=job).status_code == 201
        login(page, srv)
        button = page.locator(f"button.replay[data-endpoint='{endpoint}']")
        expect(button).to_be_enabled()
        _screenshot(page)
        rec.mode = "ok"
        button.click()
        expect(button).to_have_text("Replayed 1")
        until(lambda: rec.wait_for(lambda x: len(x.accepted) == 1, 1))
        [payload] = rec.payloads.values()
        assert payload["data"]["text"] == HOSTILE
        expect(page.locator("#scheduled-body td", has_text="<script>")).to_have_text(HOSTILE)
        assert page.locator("#scheduled-body script, #scheduled-body img").count() == 0
        assert page.evaluate("window.pwned") is None


def _off_the_page_loop(job: Coroutine[Any, Any, None]) -> None:
    """Run ``job`` on a loop of its own: Playwright's sync API holds this thread's loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, job).result()


def _stats(api: httpx.Client) -> dict[str, Any]:
    stats: dict[str, Any] = api.get("/webhooks").json()["endpoints"][0]["stats"]
    return stats


def _screenshot(page: Page) -> None:
    if target := os.environ.get("WACLIENT_DASHBOARD_SCREENSHOT"):
        page.set_viewport_size({"width": 900, "height": 1400})
        page.screenshot(path=target, full_page=True)
