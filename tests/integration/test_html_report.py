"""certify_report.html: a real tiny run rendered, opened in headless Debian Chromium (selenium).

The browser tests need /usr/bin/chromium and /usr/bin/chromedriver (Debian: chromium,
chromium-driver) and the selenium package; without them they skip, unless
BLOCKCERT_REQUIRE_BROWSER=1 (CI), where they fail. BLOCKCERT_SCREENSHOT_DIR: also copy the
full-page screenshot there.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from blockcert.evaluate.html_chart import chain_figure
from blockcert.evaluate.html_report import HTML_NAME, artifact_links, render_html
from tests.helpers import certify_in_process, train_in_process

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# blocks 1 and 3 of the 4-block tiny llama: the chain is 1, 2, 3 with block 2 the teacher's own
CERTIFIED, CHAIN = [1, 3], [1, 2, 3]
TRAIN = [  # on top of debug=tiny
    "blocks=[1,3]",
    "trainer.max_epochs=3",
    "surrogate.head_fraction=0.75",  # reduced capacity: every e_k > 0, so every point is drawn
    "surrogate.mlp_fraction=0.75",
]
CERTIFY = ["lipschitz.empirical_prompts=2"]  # the empirical series of the plot
HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through its own chromedriver (nothing downloaded)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        reason = f"headless Chromium unavailable, missing: {', '.join(missing)}"
        if os.environ.get("BLOCKCERT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (BLOCKCERT_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def certified(tmp_path_factory):
    """(report folder, report) of train + certify on the tiny llama, with a prompt set."""
    tmp = tmp_path_factory.mktemp("html")
    prompts = tmp / "prompts.txt"
    prompts.write_text("The cat sat on the mat.\nOne, two, three, four, five.\n")
    train_in_process(tmp, *TRAIN)
    certify_in_process(tmp, tmp / "run", *CERTIFY, f"prompts={prompts}")
    out = tmp / "report"
    return out, json.loads((out / "certify_report.json").read_text())


def _open(driver, page: Path) -> None:
    driver.get(page.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def _screenshot(driver, path: Path) -> Path:
    """Full-page PNG: the window grown to the page's height."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, height + 120)
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
    if os.environ.get("BLOCKCERT_SCREENSHOT_DIR"):
        target = Path(os.environ["BLOCKCERT_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def _text(driver, css: str) -> str:
    return driver.find_element("css selector", css).text


def _check_blocks_table(driver, report: dict) -> None:
    rows = driver.find_elements("css selector", "#blocks tr.block-row")
    assert [int(r.get_attribute("data-block")) for r in rows] == CHAIN
    assert [b["block"] for b in report["blocks"]] == CHAIN
    for row, b in zip(rows, report["blocks"], strict=True):
        cells = [c.text for c in row.find_elements("css selector", "td")]
        assert cells[0] == str(b["block"])
        assert cells[1] == ("yes" if b["block"] in CERTIFIED else "teacher")
        assert cells[4] == f"{b['eps']:.4g}" and cells[8] == b["step"]
        assert cells[10] == f"{b['bound_sound']:.4g}" and cells[12] == f"{b['observed']:.4g}"


def _check_plot(driver, report: dict) -> None:
    """One marker per block and series, placed on one log10 axis, each bound above e_k."""
    points = driver.find_elements("css selector", "#chain-svg .point")
    centre: dict[tuple[str, int], tuple[float, float]] = {}
    for p in points:
        box = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", p)
        key = (p.get_attribute("data-series"), int(p.get_attribute("data-block")))
        assert key not in centre
        centre[key] = (box["top"] + box["height"] / 2, float(p.get_attribute("data-value")))
    for series in ("bound_sound", "bound_empirical", "observed"):
        assert sorted(k for s, k in centre if s == series) == CHAIN, series
        for b in report["blocks"]:
            assert math.isclose(centre[(series, b["block"])][1], b[series], rel_tol=1e-12)
    # screen y = a - s log10(v) with one scale s > 0 for every marker
    (y0, v0), *rest = centre.values()
    far = max(rest, key=lambda yv: abs(math.log10(yv[1] / v0)))
    scale = (y0 - far[0]) / math.log10(far[1] / v0)
    assert scale > 0
    for y, v in rest:
        assert abs(y0 - scale * math.log10(v / v0) - y) < 1.0
    for k in CHAIN:  # higher on screen = larger: B_k >= e_k on the bound's prompts
        assert centre[("bound_sound", k)][0] <= centre[("observed", k)][0] + 0.5


def _check_self_contained(driver, page: Path) -> None:
    urls = driver.execute_script(
        "return Array.from(document.querySelectorAll('[src],[href]'))"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'))"
    )
    assert urls and not [u for u in urls if u.lower().lstrip().startswith(("http", "//"))]
    assert driver.execute_script("return document.scripts.length") == 0
    loaded = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert all(u.startswith(("file:", "data:")) for u in loaded), loaded
    for link in driver.find_elements("css selector", "a.artifact"):
        target = Path(unquote(urlparse(link.get_attribute("href")).path))
        assert target.exists(), link.get_attribute("href")
        written = driver.execute_script("return arguments[0].getAttribute('href')", link)
        assert not written.startswith(("/", "file:"))  # relative to the page
    hrefs = [a.get_attribute("href") for a in driver.find_elements("css selector", "a.artifact")]
    for name in ("certify_report.json", "certify_report.md", "bound_growth.png"):
        assert (page.parent / name).resolve().as_uri() in hrefs


def test_report_page_in_browser(browser, certified, tmp_path):
    out, report = certified
    page = out / HTML_NAME
    assert page.is_file()
    _open(browser, page)
    assert browser.title == f"BlockCert report: {report['model']['name']}"
    summary = _text(browser, "#summary")
    assert f"Certified blocks: {CERTIFIED} of 4" in summary
    assert f"Global bound B_L = {report['bound']['claimed']:.4g} on " in summary
    assert f"top-1 agreement {report['stitched']['top1_agreement']:.4%}" in summary
    statements = [e.text for e in browser.find_elements("css selector", "li.statement")]
    expected = report["statistics"]["statement"]["statement"]
    assert any(expected in s for s in statements), expected
    assert any(report["bound"]["claimed_rational"] in s for s in statements)
    _check_blocks_table(browser, report)
    _check_plot(browser, report)
    assert report["lean"]["status"] in _text(browser, "#lean-status")
    assert report["prompts"]["name"] in _text(browser, "#prompts h2")
    assert "check split" in _text(browser, "#statistics")
    own = _text(browser, "#own-split")  # eps per block on the verifier's own prompts
    assert all(str(row["block"]) in own for row in report["own_split"]["blocks"])
    _check_self_contained(browser, page)
    shot = _screenshot(browser, tmp_path / "certify_report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _hostile(report: dict, out: Path) -> tuple[dict, dict[str, str]]:
    """The real report with markup in every string a certificate or the user controls."""
    bad = json.loads(json.dumps(report))
    bad["model"]["name"] = HOSTILE
    bad["lean"]["message"] = f"</td></tr></table>{HOSTILE}"
    cert = out / f"{HOSTILE}/certificate.json"
    bad["certificates"] = {str(CERTIFIED[0]): str(cert)}
    bad["prompts"]["name"] = HOSTILE
    bad["prompts"]["per_prompt"]["label"][0] = HOSTILE
    bad["findings"] = [HOSTILE]
    return bad, artifact_links(bad, out, [out / "certify_report.json"])


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_untrusted_strings_are_text(certified):
    """No string from the report can add markup: the parsed page has no script or extra img."""
    out, report = certified
    bad, links = _hostile(report, out)
    parser = _Tags()
    parser.feed(render_html(bad, links))
    assert "script" not in parser.tags and "img" not in parser.tags
    assert all(not u.startswith(("http", "//", "javascript")) for u in parser.urls)
    assert links[f"certificate, block {CERTIFIED[0]}"].startswith("%3Cscript%3E")


def test_untrusted_strings_in_browser(browser, certified, tmp_path):
    out, report = certified
    bad, links = _hostile(report, out)
    page = tmp_path / HTML_NAME
    page.write_text(render_html(bad, links), encoding="utf-8")
    _open(browser, page)
    assert browser.title == f"BlockCert report: {HOSTILE}"  # not 'pwned': nothing ran
    assert _text(browser, "h1") == f"BlockCert report: {HOSTILE}"
    assert HOSTILE in _text(browser, "#lean-status")
    assert browser.execute_script("return document.scripts.length") == 0
    assert browser.find_elements("css selector", "img") == []
    assert len(browser.find_elements("css selector", "#blocks tr.block-row")) == len(CHAIN)


def test_chain_figure_drops_missing_and_zero_values():
    """None (not computed) draws nothing, 0 has no place on a log axis; all-zero: a note."""
    blocks = [
        {"block": 4, "bound_sound": 0.5, "bound_empirical": None, "observed": 0.0},
        {"block": 5, "bound_sound": 20.0, "bound_empirical": None, "observed": 0.25},
    ]
    figure = chain_figure(blocks)
    assert 'data-series="bound_empirical"' not in figure
    assert figure.count('data-series="bound_sound" data-block=') == 2
    assert figure.count('data-series="observed" data-block="5"') == 1
    assert 'data-series="observed" data-block="4"' not in figure
    assert "B_k empirical" in figure and "at block(s) 4." in figure
    # the y axis spans whole decades around the values: 10^-1 .. 10^2
    assert 'data-log-lo="-1"' in figure and 'data-log-hi="2"' in figure
    empty = chain_figure([{"block": 0, "bound_sound": 0.0, "bound_empirical": None, "observed": 0}])
    assert "<svg" not in empty and "nothing to draw" in empty
