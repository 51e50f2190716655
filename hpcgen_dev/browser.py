"""Headless Chromium for the report's browser test: Debian's ``chromium`` and ``chromium-driver`` packages,
installed here when missing (as hpcgen_dev.cluster installs SLURM's), driven through selenium's WebDriver
client (PyPI) with the driver binary given explicitly, so nothing is downloaded at run time.

    python -m hpcgen_dev.browser check REPORT.html    # prints console errors and per-plot pixel checks
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver",)
PACKAGES = ("chromium", "chromium-driver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1280,1000")


def _find(paths: tuple[str, ...]) -> str | None:
    return next((p for p in paths if os.access(p, os.X_OK)), None)


def ensure_chromium() -> tuple[str, str]:
    """(chromium, chromedriver) paths; installs Debian's packages when they are missing (needs root)."""
    if not (_find(CHROMIUM) and _find(DRIVER)):
        if shutil.which("apt-get") is None:
            raise RuntimeError("chromium/chromedriver missing and no apt-get to install them")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", *PACKAGES], env=env, check=True, capture_output=True)
    chromium, driver = _find(CHROMIUM), _find(DRIVER)
    if not (chromium and driver):
        raise RuntimeError(f"apt-get installed {PACKAGES} but chromium/chromedriver are still missing")
    return chromium, driver


def check_page(path: Path) -> dict[str, Any]:
    """Open ``path`` in headless Chromium (fresh profile): console errors, and for every ``img.plot`` whether
    it loaded and the share of its screenshot's pixels that are not background."""
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    chromium, driver_path = ensure_chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="hpcgen-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    try:
        driver.get(Path(path).resolve().as_uri())
        ready = driver.execute_script("return document.readyState")
        plots: dict[str, dict[str, Any]] = {}
        for el in driver.find_elements(By.CSS_SELECTOR, "img.plot"):
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
            info = driver.execute_script(
                "const r = arguments[0].getBoundingClientRect();"
                "return {complete: arguments[0].complete, w: arguments[0].naturalWidth, "
                "h: arguments[0].naturalHeight, shown_w: r.width, shown_h: r.height}", el)
            img = Image.open(io.BytesIO(el.screenshot_as_png)).convert("L")
            hist = img.histogram()
            total = sum(hist)
            background = max(range(256), key=lambda v: hist[v])
            drawn = sum(n for v, n in enumerate(hist) if abs(v - background) > 24) / max(1, total)
            plots[el.get_attribute("id") or "?"] = {**info, "drawn_share": drawn, "levels": sum(1 for n in hist if n)}
        console = driver.get_log("browser")
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return {"ready": ready, "console": console, "plots": plots, "resources": resources}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        print(json.dumps(check_page(Path(sys.argv[2])), indent=1, default=str))
    else:
        print(__doc__)
        sys.exit(2)
