"""A screenshot of `dumpunet view` for docs/images (run by docs/make_images.sh).

    python docs/viewer_screenshot.py STORE OUT.png [WORD]

Opens the viewer on STORE in headless chromium (Playwright; chromium from PATH), clicks WORD
(default ``hair``) in the prompt and shows its word heatmap, then saves the page. Exits with 3
(and a line on stderr) where Playwright or chromium is missing, so the caller can keep the old picture.
"""

from __future__ import annotations

import shutil
import sys

from dumpunet.viewer.server import start

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
MISSING = 3  # the exit status where Playwright or chromium is missing
TIMEOUT_MS = 300_000  # a loaded machine's first render compiles numba kernels


def settle(page, before: int) -> int:
    """Wait until the page shows a view newer than number ``before`` and none newer is on its way
    (viewer.js numbers the views it is asked for, ``data-requested``, and the one shown, ``data-settled``)."""
    page.wait_for_function(
        "(n) => { const d = document.body.dataset; return Number(d.settled ?? 0) > n && d.settled === d.requested; }",
        arg=before)
    return int(page.evaluate("() => Number(document.body.dataset.settled)"))


def main(store: str, out: str, word: str = "hair") -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        print("viewer_screenshot: needs playwright (pip install playwright) and chromium on PATH", file=sys.stderr)
        return MISSING
    server = start([store])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server.url + "?view=attention")
            n = settle(page, 0)
            page.click(f"#tokens .token >> text={word}")
            n = settle(page, n)
            page.click("#views [data-view=heatmap]")
            settle(page, n)
            page.screenshot(path=out)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
