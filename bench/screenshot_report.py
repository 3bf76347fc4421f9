"""A full-page PNG of a certify_report.html in headless Chromium (the docs' report image).

python bench/screenshot_report.py <report dir>/certify_report.html docs/img/certify-report.png

Uses the Debian `chromium` and `chromium-driver` packages through selenium, as the browser test
does; nothing is downloaded and the page loads nothing from the network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH = 1280


def screenshot(page: Path, png: Path, max_height: int) -> tuple[int, int]:
    """Open `page`, grow the window to its height (capped), save `png`; returns (w, h)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(page.resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        height = min(int(height) + 40, max_height)
        driver.set_window_size(WIDTH, height)
        png.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(png)):
            raise RuntimeError(f"chromium could not save {png}")
        return WIDTH, height
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="certify_report.html")
    parser.add_argument("png", type=Path, help="where the screenshot goes")
    parser.add_argument("--max-height", type=int, default=6000, help="cap on the page height")
    args = parser.parse_args()
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER, args.page) if not p.is_file()]
    if missing:
        print(f"screenshot_report: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    width, height = screenshot(args.page, args.png, args.max_height)
    print(f"{args.png}: {width} x {height} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
