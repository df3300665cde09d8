"""The web page in a real browser: headless Debian chromium against `deepembed serve` on
127.0.0.1. Upload an image, get the tiles with loaded thumbnails, click a tile to search by
that item, filter by label, a phone-sized viewport, and an upload the server refuses."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import Server, make_run, png

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no system chromium at {CHROMIUM}", allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright  # noqa: E402

pytestmark = pytest.mark.serial
WAIT_MS = 15_000  # each wait for the page; a broken page fails after this, not never
DISTANCE = re.compile(r"^-?\d+\.\d{3}$|^-?\d\.\de-\d+$")  # 0.123, or 3.2e-6 below 0.001


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(make_run(tmp_path_factory.mktemp("page")))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


class Opener:
    """Opens `/` in fresh browser contexts (closed at teardown); records uncaught script
    errors in `errors`."""

    def __init__(self, browser: Browser, server: Server) -> None:
        self.browser, self.server = browser, server
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    def __call__(self, **context: object) -> Page:
        options = {"viewport": {"width": 1280, "height": 800}} | context
        opened = self.browser.new_context(**options)  # type: ignore[arg-type]
        self.contexts.append(opened)
        page = opened.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.goto(self.server.url + "/")
        return page


@pytest.fixture
def open_page(browser: Browser, server: Server) -> Iterator[Opener]:
    opener = Opener(browser, server)
    yield opener
    for opened in opener.contexts:
        opened.close()


@pytest.fixture
def query_file(tmp_path: Path) -> Path:
    """Exactly the bytes of indexed item 4 (make_run writes png(i, colour=i % 3))."""
    path = tmp_path / "query.png"
    path.write_bytes(png(4, colour=1))
    return path


def tile_ids(page: Page) -> list[str]:
    return page.eval_on_selector_all("#results .tile", "ts => ts.map(t => t.dataset.id)")


def wait_for_tiles(page: Page, count: int) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('#results .tile').length === n", arg=count
    )


def wait_for_new_grid(page: Page, before: list[str]) -> list[str]:
    page.wait_for_function(
        """before => {
          const ids = [...document.querySelectorAll('#results .tile')].map(t => t.dataset.id);
          return ids.length > 0 && ids.join(',') !== before.join(',');
        }""",
        arg=before,
    )
    return tile_ids(page)


def wait_for_thumbnails(page: Page) -> None:
    """Every tile's image finished loading and decoded to real pixels (lazy images are
    scrolled into view first)."""
    for tile in page.locator("#results .tile").all():
        tile.scroll_into_view_if_needed()
    page.wait_for_function(
        """() => {
          const imgs = [...document.querySelectorAll('#results .tile img')];
          return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
        }"""
    )


def test_upload_shows_tiles_with_loaded_thumbnails(
    open_page: Opener, server: Server, query_file: Path
) -> None:
    assert query_file.read_bytes() == (server.run / "images" / "4.png").read_bytes()
    page = open_page()
    page.set_input_files("#file", str(query_file))
    wait_for_tiles(page, 12)
    ids = tile_ids(page)
    assert ids[0] == "4"  # the uploaded bytes are item 4's own image
    assert len(set(ids)) == 12 and all(0 <= int(i) < 30 for i in ids)
    wait_for_thumbnails(page)
    tiles = page.locator("#results .tile")
    for i in range(12):
        tile = tiles.nth(i)
        src = tile.locator("img").get_attribute("src") or ""
        assert src.startswith(f"/items/{ids[i]}/image")
        assert DISTANCE.match(tile.locator(".distance").inner_text()), i
        assert tile.locator(".name").inner_text() in {"red", "green", "blue"}
    assert float(tiles.first.locator(".distance").inner_text()) == pytest.approx(0, abs=1e-3)
    assert re.fullmatch(r"12 results in \d+ ms", page.inner_text("#status"))
    assert page.locator("#query-image").is_visible()
    assert open_page.errors == []


def test_clicking_a_tile_searches_by_that_item(open_page: Opener, query_file: Path) -> None:
    page = open_page()
    page.set_input_files("#file", str(query_file))
    wait_for_tiles(page, 12)
    before = tile_ids(page)
    clicked = before[2]
    page.locator("#results .tile").nth(2).click()
    after = wait_for_new_grid(page, before)
    assert len(after) == 12
    assert clicked not in after  # search by id leaves the item itself out
    assert "results" in page.inner_text("#status")
    assert f"/items/{clicked}/image" in (page.get_attribute("#query-image", "src") or "")
    wait_for_thumbnails(page)
    assert open_page.errors == []


def test_label_filter_keeps_only_that_label(open_page: Opener, query_file: Path) -> None:
    page = open_page()
    page.set_input_files("#file", str(query_file))
    wait_for_tiles(page, 12)
    before = tile_ids(page)
    assert {int(i) % 3 for i in before} == {0, 1, 2}  # unfiltered: every colour
    page.fill("#label-filter", "2")
    page.press("#label-filter", "Enter")  # a changed filter re-runs the last search
    after = wait_for_new_grid(page, before)
    assert len(after) == 10  # the 10 blue items of 30, fewer than k=12
    assert all(int(i) % 3 == 2 for i in after)
    names = page.locator("#results .tile .name").all_inner_texts()
    assert names == ["blue"] * 10
    assert page.inner_text("#status").startswith("10 results")
    page.fill("#label-filter", "")
    page.set_input_files("#file", str(query_file))  # the very same file again: searched
    assert sorted(wait_for_new_grid(page, after)) == sorted(before)
    assert open_page.errors == []


def test_phone_viewport_has_no_horizontal_scroll(open_page: Opener, query_file: Path) -> None:
    page = open_page(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page.set_input_files("#file", str(query_file))
    wait_for_tiles(page, 12)
    wait_for_thumbnails(page)
    page.evaluate("window.scrollTo(0, 0)")
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1] == 390, widths
    # one column: the results under the query panel, across the screen's width
    panel, results = page.locator("#query-panel").bounding_box(), page.locator("#results")
    grid = results.bounding_box()
    assert panel is not None and grid is not None
    assert grid["y"] >= panel["y"] + panel["height"] and grid["width"] >= 300, (panel, grid)
    for tile in results.locator(".tile").all():
        assert tile.is_visible()
        box = tile.bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        assert box["width"] >= 80, box  # big enough to see and to tap
    assert open_page.errors == []


def test_a_refused_upload_shows_the_servers_message(
    open_page: Opener, server: Server, tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not a picture\n")
    answer = httpx.post(
        server.url + "/search", files={"image": ("notes.png", fake.read_bytes(), "image/png")}
    )
    assert answer.status_code == 415
    message = answer.json()["error"]
    assert message.startswith("notes.png: not an image")
    page = open_page()
    page.set_input_files("#file", str(fake))
    page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('error:')"
    )
    assert page.inner_text("#status") == f"error: {message}"
    assert page.locator("#results .tile").count() == 0
    assert open_page.errors == []
