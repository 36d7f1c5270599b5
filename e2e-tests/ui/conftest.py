"""Browser tests of the web UI: Playwright (PyPI) driving Debian's Chromium against the e2e stack.

The stack is the one `e2e-tests/conftest.py` chose (the private one under `make test`); this
file adds a UI server process (`python -m services.ui`) on a free port, pointed at that stack's
four services, and a fresh headless Chromium (`/usr/bin/chromium`, `E2E_CHROMIUM` to choose
another; `make chromium` installs Debian's package) with a fresh user-data dir per test.
`E2E_UI_URL` points the tests at a UI that is already running instead (nothing started).
Every wait is on a page condition (Playwright's `expect`), bounded by the flow timeout.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from client import SystemClient
from playwright.async_api import BrowserContext, Page, Playwright, async_playwright, expect

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDE = {"width": 1440, "height": 900}
NARROW = {"width": 375, "height": 812}


@pytest.fixture(scope="session")
def ui_url(sut: object, client: SystemClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The UI server's base URL: a process of our own on a free port, stopped by PID at the end."""
    given = os.environ.get("E2E_UI_URL")
    if given:
        yield given.rstrip("/")
        return
    from infra.procs import ServiceProcess
    from infra.stack import free_port

    endpoints = client.endpoints
    port = free_port()
    log_dir = getattr(sut, "log_dir", None)
    env = {
        "HTTP_HOST": "127.0.0.1",
        "UI_PORT": str(port),
        "HTTP_PORT": str(port),
        "ORDER_URL": endpoints.order,
        "PAYMENT_URL": endpoints.payment,
        "SHIPPING_URL": endpoints.shipping,
        "QUERY_URL": endpoints.query,
    }
    if log_dir is not None:  # a stack of ours: its development key is in its run dir
        env["UI_DEV_KEYS_DIR"] = str(Path(log_dir).parent / "auth")
    elif os.environ.get("E2E_SIGNING_KEY_FILE"):  # an external stack's key (e2e-tests/conftest.py)
        env["UI_DEV_KEYS_DIR"] = str(Path(os.environ["E2E_SIGNING_KEY_FILE"]).parent)
    else:
        raise RuntimeError("the UI server needs the stack's signing key: set E2E_SIGNING_KEY_FILE")
    proc = ServiceProcess(
        "ui", "services.ui", run_dir=tmp_path_factory.mktemp("ui"), env=env, cwd=REPO_ROOT, ports=[port]
    )
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not proc.is_alive():
                raise RuntimeError(f"the UI server did not come up; log:\n{proc.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium package")
    async with async_playwright() as pw:
        expect.set_options(timeout=float(os.environ.get("E2E_FLOW_TIMEOUT_S", "30")) * 1000)
        yield pw


@pytest.fixture
async def browser(playwright: Playwright, tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A fresh Chromium with a fresh profile, 1440 px wide; closed after the test."""
    profile = tmp_path / "chromium-profile"
    context = await playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport=WIDE
    )
    try:
        yield context
    finally:
        await context.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
async def page(browser: BrowserContext) -> Page:
    return browser.pages[0] if browser.pages else await browser.new_page()


def customer_id(tag: str) -> str:
    return f"ui-{tag}-{uuid.uuid4().hex[:10]}"


async def sign_in(page: Page, ui_url: str, role: str, customer: str | None = None) -> None:
    """Through the sign-in page, as a person would."""
    await page.goto(f"{ui_url}/#/signin")
    labels = {"customer": "Demo customer", "staff": "Warehouse staff", "admin": "Administrator"}
    await page.get_by_label(labels[role]).check()
    if customer is not None:
        await page.get_by_label("Customer id").fill(customer)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def place_order(page: Page, *, card: str | None = None, country: str | None = None) -> str:
    """Fill the basket form (defaults: an accepted card, a served country), place it, and return
    the order id from the order page it leads to."""
    await page.get_by_role("link", name="Place an order").first.click()
    await expect(page.get_by_role("heading", name="Place an order")).to_be_visible()
    if card is not None:
        await page.get_by_label("Card", exact=True).select_option(card)
    if country is not None:
        await page.get_by_label("Country").select_option(country)
    await page.get_by_role("button", name="Place order").click()
    await expect(page.get_by_role("heading", name="Live timeline")).to_be_visible()
    return page.url.rsplit("/", 1)[-1]
