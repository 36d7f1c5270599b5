"""The customer's journeys in a real browser: every outcome appears on the open page, live."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from playwright.async_api import BrowserContext, Page, expect

from reliability.faultproxy import FaultProxy

from .conftest import customer_id, place_order, sign_in


async def _mark_loaded(page: Page) -> None:
    """A marker that a reload or navigation would wipe: proves an update came in live."""
    await page.evaluate("window.__notReloaded = true")


async def _still_same_page(page: Page) -> None:
    assert await page.evaluate("window.__notReloaded === true"), "the page was reloaded"


async def test_place_order_confirmed_appears_live(page: Page, ui_url: str) -> None:
    await sign_in(page, ui_url, "customer", customer_id("place"))
    await place_order(page)
    await _mark_loaded(page)
    await expect(page.get_by_test_id("order-status")).to_have_text("CONFIRMED")
    await expect(page.get_by_test_id("payment-status")).to_have_text("CAPTURED")
    timeline = page.get_by_role("list", name="Facts of this order, live")
    await expect(timeline.locator("li[data-type='order.confirmed']")).to_have_count(1)
    await expect(timeline.locator("li[data-type='order.placed']")).to_contain_text("caused by request")
    await expect(timeline.locator("li[data-type='payment.authorized']")).to_contain_text("caused by payment.authorize")
    await expect(timeline.locator("li[data-type='order.confirmed']")).to_contain_text("caused by payment.captured")
    await expect(page.get_by_role("list", name="Saga steps so far").get_by_role("listitem").first).to_be_visible()
    await expect(page.get_by_role("button", name="Cancel order")).to_be_visible()
    await _still_same_page(page)
    # "My orders" lists it, filterable by status.
    await page.get_by_role("link", name="My orders").click()
    await page.get_by_label("Filter by status").select_option("CONFIRMED")
    await expect(page.get_by_role("cell").get_by_text("CONFIRMED")).to_have_count(1)
    await page.get_by_label("Filter by status").select_option("REJECTED")
    await expect(page.get_by_text("No orders yet.")).to_be_visible()


async def test_declined_card_is_rejected_with_its_reason(page: Page, ui_url: str) -> None:
    await sign_in(page, ui_url, "customer", customer_id("decline"))
    await place_order(page, card="tok_decline")
    await expect(page.get_by_test_id("order-status")).to_have_text("REJECTED")
    await expect(page.get_by_test_id("order-reason")).to_contain_text("card_declined")
    await expect(page.get_by_test_id("payment-status")).to_have_text("DECLINED")
    await expect(page.get_by_role("button", name="Cancel order")).to_have_count(0)


async def test_unserved_country_is_cancelled_with_payment_voided(page: Page, ui_url: str) -> None:
    await sign_in(page, ui_url, "customer", customer_id("aq"))
    await place_order(page, country="AQ")
    await expect(page.get_by_test_id("order-status")).to_have_text("CANCELLED")
    await expect(page.get_by_test_id("payment-status")).to_have_text("VOIDED")
    await expect(page.get_by_test_id("shipment-status")).to_have_text("FAILED")


async def test_cancel_after_capture_is_refunded(page: Page, ui_url: str) -> None:
    await sign_in(page, ui_url, "customer", customer_id("cancel"))
    await place_order(page)
    await expect(page.get_by_test_id("payment-status")).to_have_text("CAPTURED")
    await _mark_loaded(page)
    await page.get_by_role("button", name="Cancel order").click()
    await expect(page.get_by_test_id("order-status")).to_have_text("CANCELLED")
    await expect(page.get_by_test_id("payment-status")).to_have_text("REFUNDED")
    await expect(page.get_by_role("button", name="Cancel order")).to_have_count(0)
    await _still_same_page(page)


async def test_bad_input_is_refused_with_a_clear_message(page: Page, ui_url: str) -> None:
    await sign_in(page, ui_url, "customer", customer_id("bad"))
    await page.get_by_role("link", name="Place an order").first.click()
    await page.get_by_label("Item 1 quantity").fill("0")
    await page.get_by_role("button", name="Place order").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("invalid_input")
    await expect(alert).to_contain_text("items.0.quantity")
    await expect(page.get_by_label("Item 1 quantity")).to_be_focused()


async def test_time_travel_steps_through_versions(page: Page, ui_url: str) -> None:
    await sign_in(page, ui_url, "customer", customer_id("travel"))
    await place_order(page)
    await expect(page.get_by_test_id("order-status")).to_have_text("CONFIRMED")
    version = page.get_by_test_id("travel-version")
    await expect(version).to_have_text(re.compile(r"^Version (\d+) of \1$"))
    latest = int((await version.inner_text()).split()[1])
    assert latest >= 2
    await expect(page.get_by_test_id("travel-status")).to_have_text("CONFIRMED")
    earlier = page.get_by_role("button", name="Earlier version")
    for v in range(latest - 1, 0, -1):
        await earlier.click()
        await expect(version).to_have_text(f"Version {v} of {latest}")
    await expect(page.get_by_test_id("travel-status")).to_have_text("PENDING")
    await expect(earlier).to_be_disabled()
    await page.get_by_role("button", name="Later version").click()
    await expect(version).to_have_text(f"Version 2 of {latest}")


async def test_staff_dispatch_shows_shipped_on_the_customers_open_page(
    browser: BrowserContext, page: Page, ui_url: str
) -> None:
    await sign_in(page, ui_url, "customer", customer_id("ship"))
    order_id = await place_order(page)
    await expect(page.get_by_test_id("order-status")).to_have_text("CONFIRMED")
    await _mark_loaded(page)

    staff = await browser.new_page()  # its own tab: its own session
    await sign_in(staff, ui_url, "staff")
    await staff.get_by_role("link", name="Warehouse").click()
    await staff.get_by_role("button", name=f"Dispatch order {order_id}").click()
    await expect(staff.get_by_role("button", name=f"Deliver order {order_id}")).to_be_visible()

    await expect(page.get_by_test_id("order-status")).to_have_text("SHIPPED")
    await expect(page.get_by_test_id("shipment-status")).to_have_text("DISPATCHED")
    await expect(page.get_by_role("button", name="Cancel order")).to_have_count(0)
    await _still_same_page(page)

    await staff.get_by_role("button", name=f"Deliver order {order_id}").click()
    await expect(page.get_by_test_id("order-status")).to_have_text("DELIVERED")


async def test_a_customer_cannot_open_another_customers_order(browser: BrowserContext, page: Page, ui_url: str) -> None:
    await sign_in(page, ui_url, "customer", customer_id("owner"))
    order_id = await place_order(page)
    await expect(page.get_by_test_id("order-status")).to_have_text("CONFIRMED")

    other = await browser.new_page()
    await sign_in(other, ui_url, "customer", customer_id("other"))
    await other.goto(f"{ui_url}/#/orders/{order_id}")
    await expect(other.get_by_role("alert").first).to_contain_text(re.compile(r"Refused \((403|404)"))
    await expect(other.get_by_test_id("order-status")).to_have_count(0)


async def test_a_lost_stream_resumes_with_last_event_id(browser: BrowserContext, page: Page, ui_url: str) -> None:
    """The browser reaches the UI through a TCP proxy that resets every open connection: the
    page's SSE stream reconnects by itself, sends Last-Event-ID, and misses no fact."""
    target = urlsplit(ui_url)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 80, name="ui") as proxy:
        via = f"http://127.0.0.1:{proxy.port}"
        streams: list[dict[str, str]] = []
        page.on("request", lambda r: streams.append(r.headers) if "/api/query/stream" in r.url else None)
        await sign_in(page, via, "customer", customer_id("resume"))
        order_id = await place_order(page)
        await expect(page.get_by_test_id("order-status")).to_have_text("CONFIRMED")
        timeline = page.get_by_role("list", name="Facts of this order, live")
        facts_before = await timeline.get_by_role("listitem").count()
        await _mark_loaded(page)
        state = page.locator("#stream-state")
        await expect(state).to_have_text("live")

        assert proxy.reset_connections() >= 1  # the wire breaks under the open stream
        await expect(state).to_contain_text("resumed after fact #")
        last_seen = (await state.inner_text()).split("#")[1].rstrip(")")
        assert streams[-1].get("last-event-id") == last_seen, streams[-1]

        staff = await browser.new_page()  # a fact after the resume still reaches the page
        await sign_in(staff, ui_url, "staff")
        await staff.get_by_role("link", name="Warehouse").click()
        await staff.get_by_role("button", name=f"Dispatch order {order_id}").click()
        await expect(page.get_by_test_id("order-status")).to_have_text("SHIPPED")
        await expect(timeline.locator("li[data-type='order.shipped']")).to_have_count(1)
        types = await timeline.get_by_role("listitem").evaluate_all("items => items.map(i => i.dataset.type)")
        assert len(types) == len(set(types)) >= facts_before + 2, types
        await _still_same_page(page)
