"""The documentation site (``make docs``) in a real browser: headless Chromium driven by chromedriver
(Debian's ``chromium`` and ``chromium-driver``), the site served over HTTP as GitHub Pages would.

Every notebook page holds the images of its figure cells. On the front page, the results page and a
notebook page: every image has loaded (``naturalWidth > 0``), the browser logged no JavaScript error,
and every link inside the site leads to a page that exists and holds the anchor it names. Skipped,
with the reason, when the site is not built or there is no browser; ``MIXOUT_REQUIRE_SITE=1`` (set by
CI) turns those skips into failures.
"""

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
from test_notebooks import DRAWING

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "docs" / "_build" / "html"
PAGES = ("index.html", "docs/results.html", "notebooks/03_emnist_to_mnist.html")
BROWSER = ("chromium", "/usr/bin/chromium")
DRIVER = ("chromedriver", "/usr/bin/chromedriver")


def _unavailable(reason: str):
    if os.environ.get("MIXOUT_REQUIRE_SITE") == "1":
        pytest.fail(f"MIXOUT_REQUIRE_SITE=1 but {reason}")
    pytest.skip(reason)


def _which(names) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


@pytest.fixture(scope="module")
def built() -> Path:
    if not (SITE / "index.html").is_file():
        _unavailable(f"the documentation site is not built ({SITE}); run `make docs`")
    return SITE


@pytest.fixture(scope="module")
def served(built):
    """The built site served on a free local port: its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    browser, driver = _which(BROWSER), _which(DRIVER)
    if not (browser and driver):
        _unavailable("no headless Chromium here (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="no selenium (pip install -e '.[docs]')")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield chrome
    chrome.quit()


def test_every_figure_a_notebook_draws_is_on_its_page(built):
    for name, drawing in DRAWING.items():
        page = (built / "notebooks" / name).with_suffix(".html").read_text(encoding="utf-8")
        images = re.findall(r'<img [^>]*src="[^"]*_images/[^"]+\.png"', page)
        assert len(images) >= drawing, f"{name}: {len(images)} images on its page, {drawing} cells draw"


def _anchors(html: str) -> set[str]:
    return set(re.findall(r'\sid="([^"]+)"', html))


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_its_images_links_and_scripts(page, served, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser")  # what earlier pages logged
    browser.get(urljoin(served, page))
    want = "/docs/index.html" if page == "index.html" else page  # the root's index.html forwards there

    def loaded(b):  # the URL changes when the forward starts; the new document loads after it
        return b.current_url.endswith(want) and b.execute_script("return document.readyState") == "complete"

    WebDriverWait(browser, 30).until(loaded)
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy images, if any
    images = browser.execute_script(
        "return Array.from(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    assert images, f"{page}: no image on the page"
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, f"{page}: images that did not load: {broken}"
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"{page}: JavaScript errors: {errors}"
    browser.save_screenshot(str(tmp_path / (page.replace("/", "_") + ".png")))

    here = browser.current_url
    links = browser.execute_script("return Array.from(document.links, a => a.href)")
    internal = {unquote(h) for h in links if h.startswith(served)}
    assert internal, f"{page}: no link inside the site"
    bad = []
    for href in sorted(internal):
        parts = urlsplit(href)
        target = SITE / parts.path.removeprefix("/")
        if target.is_dir():
            target /= "index.html"
        if not target.is_file():
            bad.append(f"{href} (no such file)")
        elif parts.fragment and target.suffix == ".html":
            if parts.fragment not in _anchors(target.read_text(encoding="utf-8")):
                bad.append(f"{href} (no anchor #{parts.fragment})")
    assert not bad, f"{here}: links that lead nowhere: {bad}"
