"""Screenshots of the search page: the test run (30 coloured 40-px images, a small_cnn
model), `deepembed serve`, one upload (item 4's own image), the result grid, in headless
Debian chromium at desktop (1280x800) and phone (390x844) sizes.

    .venv/bin/python bench/screenshot_page.py   # from the repository root
    .venv/bin/python bench/screenshot_page.py --run runs/mnist30 --query runs/mnist30/query.png

Writes docs/service-page.png and docs/service-page-phone.png; with --run, a real run
directory (e.g. the one `make demo` writes) is served and --query uploaded instead."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.service.conftest when run as a script

from tests.service.conftest import Server, make_run, png  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SHOTS = {
    "service-page.png": {"viewport": {"width": 1280, "height": 800}},
    "service-page-phone.png": {
        "viewport": {"width": 390, "height": 844},
        "device_scale_factor": 2,
        "is_mobile": True,
        "has_touch": True,
    },
}


def shoot(browser: Browser, url: str, query: Path, out: Path, context: dict) -> None:
    opened = browser.new_context(**context)
    try:
        page = opened.new_page()
        page.set_default_timeout(30_000)
        page.goto(url + "/")
        page.wait_for_function("() => document.getElementById('stats').textContent !== ''")
        page.set_input_files("#file", str(query))
        page.wait_for_function("() => document.querySelectorAll('#results .tile').length === 12")
        for tile in page.locator("#results .tile").all():  # lazy thumbnails: bring each in
            tile.scroll_into_view_if_needed()
        page.wait_for_function(
            """() => [...document.querySelectorAll('#results .tile img')]
                      .every(i => i.complete && i.naturalWidth > 0)"""
        )
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(out))
        print(f"{out.relative_to(ROOT)}: {page.inner_text('#status')}")
    finally:
        opened.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run directory to serve (default: test data)")
    parser.add_argument("--query", type=Path, help="the image to upload (with --run)")
    args = parser.parse_args()
    docs = ROOT / "docs"
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is not None:
            run, query = args.run, args.query
        else:
            run = make_run(Path(tmp))
            query = Path(tmp) / "query.png"
            query.write_bytes(png(4, colour=1))  # indexed item 4's bytes
        server = Server(run, timeout=120)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
                )
                try:
                    for name, context in SHOTS.items():
                        shoot(browser, server.url, query, docs / name, context)
                finally:
                    browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
