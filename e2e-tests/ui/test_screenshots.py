"""Screenshots of the main pages: `make screenshots` keeps them in docs/ui/ (the README shows
them); otherwise they go to a temporary directory, and the test still proves every page renders."""

from __future__ import annotations

import os
import re
from pathlib import Path

from playwright.async_api import BrowserContext, Page, expect

from .conftest import NARROW, customer_id, place_order, sign_in

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_screenshots_of_the_main_pages(browser: BrowserContext, page: Page, ui_url: str, tmp_path: Path) -> None:
    out = Path(os.environ.get("E2E_UI_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []

    async def shot(p: Page, name: str) -> None:
        path = out / f"{name}.png"
        await p.screenshot(path=str(path), full_page=True)
        shots.append(path)

    await page.goto(f"{ui_url}/#/signin")
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await shot(page, "sign-in")

    await sign_in(page, ui_url, "customer", customer_id("screens"))
    await page.get_by_role("link", name="Place an order").first.click()
    await expect(page.get_by_role("button", name="Place order")).to_be_visible()
    await shot(page, "place-order")
    order_id = await place_order(page)
    await expect(page.get_by_test_id("order-status")).to_have_text("CONFIRMED")
    await expect(page.get_by_test_id("travel-version")).to_have_text("Version 2 of 2")
    await expect(page.locator("#stream-state")).to_have_text(re.compile(r"^live"))
    await expect(page.locator("ol.timeline li[data-type='order.confirmed']")).to_have_count(1)
    await shot(page, "order")
    await page.get_by_role("link", name="My orders").click()
    await expect(page.get_by_role("cell").get_by_text("CONFIRMED")).to_have_count(1)
    await shot(page, "my-orders")

    staff = await browser.new_page()
    await sign_in(staff, ui_url, "staff")
    await expect(staff.get_by_role("button", name=f"Dispatch order {order_id}")).to_be_visible()
    await shot(staff, "warehouse")

    admin = await browser.new_page()
    await sign_in(admin, ui_url, "admin")
    await expect(admin.get_by_role("img", name=re.compile(r"^Orders by status"))).to_be_visible()
    await expect(admin.get_by_role("region", name="Consumer lag").get_by_role("table")).to_be_visible()
    await shot(admin, "operations")

    await page.set_viewport_size(NARROW)
    await page.goto(f"{ui_url}/#/orders/{order_id}")
    await expect(page.get_by_test_id("order-status")).to_have_text("CONFIRMED")
    await shot(page, "order-375px")

    for path in shots:
        assert path.read_bytes()[:8] == PNG_MAGIC, path
