"""Layout at 375 px and 1440 px, keyboard use with visible focus, and the admin's operations page."""

from __future__ import annotations

import re

import pytest
from client import SystemClient, eventually
from client import expect as expect_status
from playwright.async_api import Page, expect
from test_dlq import send_poison

from .conftest import NARROW, WIDE, customer_id, place_order, sign_in


async def dead_letter_one(client: SystemClient) -> str:
    """A poison `payment.authorize` on payment.commands, once GET /admin/dlq lists it: its id."""
    command_id = await send_poison(client, "ui-dlq")

    async def listed() -> bool | None:
        items = expect_status(await client.dead_letters(), 200)["items"]
        return True if any(d.get("id") == command_id for d in items) else None

    await eventually(listed, timeout=60, what=f"dead letter {command_id} listed")
    return command_id


@pytest.mark.parametrize("viewport", [NARROW, WIDE], ids=["375px", "1440px"])
async def test_pages_fit_the_width(page: Page, ui_url: str, viewport: dict[str, int]) -> None:
    await page.set_viewport_size(viewport)
    await sign_in(page, ui_url, "customer", customer_id("layout"))
    for heading in ("My orders", "Place an order"):
        await page.get_by_role("link", name=heading).first.click()
        await expect(page.get_by_role("heading", name=heading)).to_be_visible()
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), heading
    await place_order(page)
    await expect(page.get_by_test_id("order-status")).to_have_text("CONFIRMED")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    box = await page.get_by_role("button", name="Cancel order").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]


async def test_sign_in_by_keyboard_with_visible_focus(page: Page, ui_url: str) -> None:
    await page.goto(f"{ui_url}/#/signin")
    await expect(page.get_by_role("note")).to_contain_text("For development only")
    for _ in range(20):  # Tab through the page until the submit button has the focus
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement?.textContent === 'Sign in'"):
            break
    sign_in_button = page.get_by_role("button", name="Sign in")
    await expect(sign_in_button).to_be_focused()
    outline = await sign_in_button.evaluate(
        "el => getComputedStyle(el).outlineStyle + ' ' + getComputedStyle(el).outlineWidth"
    )
    assert not outline.startswith("none") and not outline.endswith(" 0px"), outline
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    await expect(page.get_by_role("heading", name="My orders")).to_be_visible()


async def test_operations_lag_dead_letters_stats_and_rebuild(page: Page, ui_url: str, client: SystemClient) -> None:
    command_id = await dead_letter_one(client)  # listed before the page opens: no refresh needed
    await sign_in(page, ui_url, "admin")
    await expect(page.get_by_role("heading", name="Operations")).to_be_visible()
    await expect(page.get_by_role("img", name=re.compile(r"^Orders by status: PENDING \d+"))).to_be_visible()
    lag = page.get_by_role("region", name="Consumer lag")
    await expect(lag.get_by_role("cell", name=re.compile(r"^query\.views"))).not_to_have_count(0)
    letters = page.get_by_role("region", name="Dead letters")
    await letters.get_by_role("button", name=f"Replay dead letter {command_id}").first.click()
    await expect(letters.get_by_test_id("dlq-outcome")).to_have_text(
        re.compile(rf"^Replayed payment\.authorize {command_id} to payment\.commands ")
    )
    await page.get_by_role("button", name="Start rebuild").click()
    progress = page.get_by_role("region", name="Rebuild the views")
    await expect(progress.get_by_role("progressbar", name="Rebuild progress")).to_be_visible()
    await expect(progress).to_contain_text("switched", timeout=120_000)
