"""The base layout in Chromium: the menu reaches every page, the keyboard alone gets around,
light and dark follow the system, and a phone-width screen needs no sideways scrolling."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.dashboard.support import LAYOUT_PAGES, DashboardDaemon


def test_the_menu_leads_to_every_page_and_marks_the_current_one(
    admin_page: Page, dashboard: DashboardDaemon
) -> None:
    menu = admin_page.get_by_role("navigation", name="Dashboard pages")
    for entry in LAYOUT_PAGES:
        menu.get_by_role("link", name=entry.label, exact=True).click()
        admin_page.wait_for_url(dashboard.url + entry.path)
        expect(admin_page.get_by_role("heading", level=1)).to_have_text(entry.label)
        current = menu.locator("[aria-current=page]")
        expect(current).to_have_count(1)
        expect(current).to_have_text(entry.label)


def test_the_keyboard_alone_skips_to_the_content_and_follows_the_menu(
    admin_page: Page, dashboard: DashboardDaemon
) -> None:
    admin_page.keyboard.press("Tab")
    expect(admin_page.locator(":focus")).to_have_text("Skip to content")
    admin_page.keyboard.press("Enter")
    assert admin_page.evaluate("document.activeElement.id") == "main"
    admin_page.goto(dashboard.url + "/")
    for _ in range(40):  # Tab through the header until the Spool link has the focus
        admin_page.keyboard.press("Tab")
        if admin_page.evaluate("document.activeElement.textContent") == "Spool":
            break
    admin_page.keyboard.press("Enter")
    admin_page.wait_for_url(dashboard.url + "/spool")
    focused_outline = admin_page.evaluate(
        "() => { const a = document.querySelector('.site-nav a'); a.focus();"
        " return getComputedStyle(a).outlineStyle; }"
    )
    assert focused_outline == "solid"  # a visible focus ring


def colours(page: Page) -> tuple[str, str]:
    background, text = page.evaluate(
        "() => { const s = getComputedStyle(document.body); return [s.backgroundColor, s.color]; }"
    )
    return str(background), str(text)


def test_light_and_dark_follow_the_system(admin_page: Page) -> None:
    admin_page.emulate_media(color_scheme="light")
    light_background, light_text = colours(admin_page)
    admin_page.emulate_media(color_scheme="dark")
    dark_background, dark_text = colours(admin_page)
    assert light_background == "rgb(247, 247, 245)"
    assert dark_background == "rgb(21, 23, 26)"
    assert light_text != dark_text


def test_phone_width_needs_no_sideways_scrolling(
    admin_page: Page, dashboard: DashboardDaemon
) -> None:
    admin_page.set_viewport_size({"width": 360, "height": 740})
    for entry in LAYOUT_PAGES:
        admin_page.goto(dashboard.url + entry.path)
        overflow = admin_page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, entry
        expect(admin_page.get_by_role("button", name="Log out")).to_be_visible()
