"""Regenerate the README's screenshots of the web page (``docs/screens/``): the empty page, a running job and a
result with its before/after handle, each at 1440 x 900 (a laptop) and 390 x 844 (a phone), in headless Chromium.

Start a server first (``CLIPDLUT_CLIP_MODEL=tiny make serve`` offline: its looks are arbitrary, its page is the same),
then ``python docs/make_screenshots.py [--url http://127.0.0.1:3000]``. The photo is scikit-image's ``coffee``
saved as a camera-sized JPEG.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from clipdlut.evaluation import IMAGES

OUT = Path(__file__).with_name("screens")
SIZES = {"desktop": (1440, 900), "phone": (390, 844)}


def browser(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    chrome = driver.get_window_size()["height"] - driver.execute_script("return window.innerHeight")
    driver.set_window_size(width, height + chrome)  # (the page's own viewport at the size named)
    return driver


def save(driver: webdriver.Chrome, name: str) -> None:
    OUT.mkdir(exist_ok=True)
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    shot.save(OUT / f"{name}.jpg", quality=85, optimize=True)
    print(OUT / f"{name}.jpg", shot.size)


def grade(driver: webdriver.Chrome, url: str, photo: Path, steps: int) -> None:
    driver.get(url + "/ui/")
    driver.find_element(By.ID, "file").send_keys(str(photo))
    driver.find_element(By.ID, "prompt").send_keys("温暖的金色黄昏胶片")
    driver.find_element(By.CSS_SELECTOR, "details summary").click()
    box = driver.find_element(By.ID, "steps")
    box.clear()
    box.send_keys(str(steps))
    driver.find_element(By.CSS_SELECTOR, "details summary").click()
    driver.find_element(By.ID, "submit").click()


def iteration(driver: webdriver.Chrome) -> int:
    return int(driver.find_element(By.ID, "iteration").get_attribute("textContent") or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--steps", type=int, default=300, help="steps of the running job (long enough to catch)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "DSC_0412.jpg"
        IMAGES["coffee"]().resize((3000, 2000), Image.Resampling.LANCZOS).save(photo, quality=92)
        for device, (width, height) in SIZES.items():
            driver = browser(width, height)
            try:
                driver.get(args.url + "/ui/")
                save(driver, f"{device}-empty")
                grade(driver, args.url, photo, args.steps)
                WebDriverWait(driver, 300, 0.1).until(lambda d: iteration(d) >= args.steps // 3
                                                      and d.find_element(By.ID, "preview").is_displayed())
                time.sleep(1)  # (the smooth scroll to the progress has ended)
                save(driver, f"{device}-running")
                driver.find_element(By.ID, "stop").click()
                WebDriverWait(driver, 60, 0.1).until(
                    lambda d: d.find_element(By.ID, "state").get_attribute("textContent") == "stopped")
                grade(driver, args.url, photo, 60)
                WebDriverWait(driver, 300, 0.2).until(lambda d: d.find_element(By.ID, "result").is_displayed()
                                                      and d.find_element(By.ID, "after-live").get_attribute(
                                                          "data-ready"))
                driver.execute_script("const s = document.getElementById('split'); s.value = 40;"
                                      "s.dispatchEvent(new Event('input'));")
                time.sleep(1)
                save(driver, f"{device}-result")
            finally:
                driver.quit()


if __name__ == "__main__":
    main()
