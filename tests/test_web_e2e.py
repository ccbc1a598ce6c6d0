"""The web page in headless Chromium (Debian's package, driven by Selenium) against a real tiny-model server."""

from __future__ import annotations

import base64
import io
import re
import shutil
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from clipdlut.cube import read_cube
from tests.conftest import gradient_image
from tests.live import serving

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"
if not (CHROMIUM and DRIVER):
    pytest.skip("Chromium and chromedriver are not installed (`make test` installs Debian's chromium and "
                "chromium-driver where it can use apt)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("web"), CLIPDLUT_PROGRESS_EVERY="1") as s:
        yield s


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2300"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.downloads = tmp_path
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def whole_page(driver) -> None:
    """A window tall enough for the whole page (a screenshot shows the viewport only)."""
    chrome = driver.get_window_size()["height"] - driver.execute_script("return window.innerHeight")
    driver.set_window_size(1280, driver.execute_script("return document.documentElement.scrollHeight") + chrome)


def text(driver, element_id: str) -> str:
    """An element's text whether or not it is shown yet (Selenium's ``.text`` is empty while hidden)."""
    return driver.find_element(By.ID, element_id).get_attribute("textContent").strip()


def iteration(driver) -> int:
    return int(text(driver, "iteration") or 0)


def errors_in_console(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def recent_id(driver) -> str:
    """The task id of the page's latest submission (its recent list in local storage)."""
    return driver.execute_script("return JSON.parse(localStorage.getItem('clipdlut.recent'))[0].id")


def photos(tmp_path: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    paths = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        paths.append(tmp_path / f"photo-{i + 1}.png")
        gradient_image(w, h, seed=i).save(paths[-1])
    return paths


def start(driver, server, tmp_path, steps: int, images: list[Path] | None = None, prompt: str = "温暖的金色黄昏胶片",
          reference: Path | None = None, keep_blacks: bool = False, bw: bool = False, protect_skin: bool = False,
          footage: dict[str, str] | None = None, more_looks: tuple[str, ...] = ()) -> None:
    driver.get(server.url + "/ui/")
    driver.execute_script(  # every phase the run panel says, in order (read by the tests as window.phases)
        "window.phases = []; const s = document.getElementById('state');"
        "new MutationObserver(() => { if (phases.at(-1) !== s.textContent) phases.push(s.textContent); })"
        ".observe(s, { childList: true, characterData: true, subtree: true });")
    files = images or photos(tmp_path, [(320, 240)])
    driver.find_element(By.ID, "file").send_keys("\n".join(map(str, files)))  # one path a line: several files
    if reference is not None:
        driver.find_element(By.ID, "reference").send_keys(str(reference))
    driver.find_element(By.ID, "prompt").send_keys(prompt)
    for look in more_looks:  # (candidate looks: one job each, graded together)
        driver.find_element(By.ID, "add-look").click()
        driver.switch_to.active_element.send_keys(look)
    driver.find_element(By.CSS_SELECTOR, "details summary").click()
    steps_box = driver.find_element(By.ID, "steps")
    steps_box.clear()
    steps_box.send_keys(str(steps))
    for box, checked in (("keep-blacks", keep_blacks), ("protect-skin", protect_skin), ("bw", bw)):
        if checked:
            driver.find_element(By.ID, box).click()
    for select, value in (footage or {}).items():  # (the lists come from /v1/footage: wait for them)
        WebDriverWait(driver, 30).until(lambda d, s=select: not d.find_element(By.ID, s).get_attribute("disabled")
                                        or s == "input-space")
        WebDriverWait(driver, 30).until(lambda d, s=select, v=value: any(
            o.get_attribute("value") == v for o in Select(d.find_element(By.ID, s)).options))
        Select(driver.find_element(By.ID, select)).select_by_value(value)
    driver.find_element(By.ID, "submit").click()


def test_grade_watch_compare_and_download(browser, server, tmp_path):
    start(browser, server, tmp_path, steps=60, keep_blacks=True, protect_skin=True)
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)
    wait.until(lambda d: iteration(d) > 0)
    first = browser.find_element(By.ID, "preview").get_attribute("src")
    shot(browser, "web-running")
    wait.until(lambda d: d.find_element(By.ID, "preview").get_attribute("src") not in (first, None, ""))
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    assert iteration(browser) == 60
    assert "CLIP similarity" in text(browser, "scores")  # (the figures, in their fold under the words)
    assert "LUT safe on any footage: yes" in text(browser, "quality")
    assert "Skin tones (protected): hue moved at most" in text(browser, "quality")
    assert "skin tones kept; the LUT is safe to use on any photo or footage." in text(browser, "summary")
    # the comparison: before on the left of the handle, after on its right; \\ shows the whole photo before
    assert browser.find_element(By.ID, "after").value_of_css_property("clip-path") == "inset(0px 0px 0px 50%)"
    assert [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#compare .tag")] == ["Before", "After"]
    for visibility in ("hidden", "visible"):
        ActionChains(browser).send_keys("\\").perform()
        assert browser.find_element(By.ID, "after").value_of_css_property("visibility") == visibility
    assert browser.find_element(By.ID, "strength").get_attribute("max") == "1"  # (beyond the look: skin unkept)
    handle = browser.find_element(By.ID, "handle")  # the split moves with its handle, dragged on the photo
    ActionChains(browser).drag_and_drop_by_offset(handle, -handle.location["x"] + 10, 0).perform()
    assert float(browser.find_element(By.ID, "split").get_attribute("value")) < 10
    assert browser.find_element(By.ID, "after").value_of_css_property("visibility") == "visible"
    browser.execute_script("const s = document.getElementById('split'); s.value = 50;"
                           "s.dispatchEvent(new Event('input'));")
    assert not browser.find_element(By.ID, "dl-cube-33").is_displayed()  # (the job's own size is ".cube (33)")
    shot(browser, "web-result")

    # strength in the browser: each move redraws the preview here, as Pillow renders it on the server
    wait.until(lambda d: d.find_element(By.ID, "after-live").get_attribute("data-ready"))
    ms = browser.execute_script("const s = document.getElementById('strength'); s.value = 0.5;"
                                "s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));"
                                "return window.lastStrengthDrawMs;")
    assert browser.find_element(By.ID, "strength-value").text == "0.50" and 0 < ms < 100, ms
    assert browser.find_element(By.ID, "after-live").is_displayed()
    live = Image.open(io.BytesIO(base64.b64decode(browser.execute_script(
        "return document.getElementById('after-live').toDataURL('image/png').split(',')[1]")))).convert("RGB")
    own = httpx.get(server.url + "/v1/retouch/get", params={"task_id": recent_id(browser)}).json()["cube"]
    served = httpx.post(server.url + "/v1/apply", data={"strength": "0.5", "image_format": "png"},
                        files={"image": ("photo.png", (tmp_path / "photo-1.png").read_bytes()),
                               "lut": ("look.cube", own)})
    served_img = Image.open(io.BytesIO(served.content)).convert("RGB")
    assert np.abs(np.asarray(live, dtype=int) - np.asarray(served_img, dtype=int)).max() <= 2

    task_id = recent_id(browser)

    def lut(**options) -> bytes:
        return httpx.post(server.url + "/v1/lut", json={"task_id": task_id, **options}).content

    browser.find_element(By.ID, "dl-cube").click()  # (the strength chosen is baked into every LUT downloaded)
    cube = wait.until(lambda d: (f := browser.downloads / "温暖的金色黄昏胶片-50pct_33.cube").exists()
                      and f.stat().st_size > 0 and not list(browser.downloads.glob("*.crdownload")) and f)
    api = httpx.get(server.url + "/v1/retouch/get", params={"task_id": task_id}).json()["cube"]
    assert cube.read_bytes() == lut(strength=0.5) != api.encode("utf-8")
    assert read_cube(api).table[0, 0, 0].tolist() == [0, 0, 0]  # the page's "Keep blacks" reached the job
    assert httpx.get(server.url + "/v1/retouch/get", params={"task_id": task_id}).json()["skin"]["protected"]
    assert browser.find_element(By.ID, "dl-cube-17").get_attribute("href") is None  # (fetched when asked for)
    browser.find_element(By.ID, "dl-cube-17").click()
    small = wait.until(lambda d: (f := browser.downloads / "温暖的金色黄昏胶片-50pct_17.cube").exists()
                       and f.stat().st_size > 0 and not list(browser.downloads.glob("*.crdownload")) and f)
    assert small.read_bytes() == lut(size=17, strength=0.5) and read_cube(small.read_bytes()).size == 17
    Select(browser.find_element(By.ID, "lut-format")).select_by_value("clf")  # the formats the service lists
    browser.find_element(By.ID, "dl-format").click()
    clf = wait.until(lambda d: (f := next(iter(browser.downloads.glob("*.clf")), None)) and f.stat().st_size > 0
                     and not list(browser.downloads.glob("*.crdownload")) and f)
    assert clf.read_bytes() == lut(format="clf", size=33, strength=0.5)
    assert errors_in_console(browser) == []

    browser.refresh()  # the recent list survives a reload
    assert "温暖的金色黄昏胶片" in browser.find_element(By.ID, "recent").text


def strip_images(driver) -> list[list]:
    """Each image of the result strip: [decoded, natural width, natural height]."""
    return driver.execute_script("return [...document.querySelectorAll('#strip img')]"
                                 ".map((i) => [i.complete && i.naturalWidth > 0, i.naturalWidth, i.naturalHeight])")


def test_a_series_graded_with_one_look_then_refined(browser, server, tmp_path):
    sizes = [(320, 240), (240, 320), (300, 200)]
    start(browser, server, tmp_path, steps=6, images=photos(tmp_path, sizes))
    assert text(browser, "drop-text").startswith("3 photos, one look for all")
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    wait.until(lambda d: all(decoded for decoded, _, _ in strip_images(d)))
    assert [size for _, *size in strip_images(browser)] == [list(s) for s in sizes]
    links = browser.find_elements(By.CSS_SELECTOR, "#strip a")
    assert [a.get_attribute("download") for a in links] == [f"photo-{i}-温暖的金色黄昏胶片.png" for i in (1, 2, 3)]
    assert "3 photos graded with one look" in text(browser, "scores")
    browser.find_elements(By.CSS_SELECTOR, "#strip button")[1].click()  # photo 2 in the comparison
    assert browser.find_element(By.ID, "after").get_attribute("src") == links[1].get_attribute("href")
    assert text(browser, "dl-image") == "Full-resolution image (photo 2)"
    download_all_at_half_strength(browser, server, [tmp_path / f"photo-{i}.png" for i in (1, 2, 3)])
    whole_page(browser)
    shot(browser, "web-series")
    first = recent_id(browser)
    series = httpx.get(server.url + "/v1/retouch/get", params={"task_id": first}).json()
    assert [(p["width"], p["height"]) for p in series["images"]] == sizes

    browser.find_element(By.ID, "refine").click()  # the same photos, a follow-up prompt, from the first look
    assert browser.find_element(By.ID, "refine-note").is_displayed() and text(browser, "refine-id") == first
    prompt = browser.find_element(By.ID, "prompt")
    assert prompt.get_attribute("value") == "" and browser.switch_to.active_element == prompt
    prompt.send_keys("更暖一点")
    shot(browser, "web-refine")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: recent_id(d) != first)
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    assert not browser.find_element(By.ID, "refine-note").is_displayed()
    refined = httpx.get(server.url + "/v1/retouch/get", params={"task_id": recent_id(browser)}).json()
    assert f"refined from task {first}" in refined["cube"] and "更暖一点" in refined["cube"]
    assert [(p["width"], p["height"]) for p in refined["images"]] == sizes
    assert len(strip_images(browser)) == 3
    assert "更暖一点 · 3 photos · refining" in browser.find_element(By.ID, "recent").text
    assert errors_in_console(browser) == []


def download_all_at_half_strength(browser, server, originals: list[Path]) -> None:
    """"Download all" at strength 0.5: one zip of the LUT at that strength (the .cube and the Hald PNG, as /v1/lut
    writes them) and every photo graded by that .cube at full resolution (as /v1/apply renders it)."""
    browser.execute_script("const s = document.getElementById('strength'); s.value = 0.5;"
                           "s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));")
    browser.find_element(By.ID, "dl-all").click()
    zipped = WebDriverWait(browser, 120, poll_frequency=0.1).until(
        lambda d: (f := browser.downloads / "温暖的金色黄昏胶片-50pct.zip").exists() and f.stat().st_size > 0
        and not list(browser.downloads.glob("*.crdownload")) and f)
    task_id = recent_id(browser)
    lut = httpx.post(server.url + "/v1/lut", json={"task_id": task_id, "strength": 0.5}).content
    hald = httpx.post(server.url + "/v1/lut", json={"task_id": task_id, "strength": 0.5, "format": "hald"}).content
    with zipfile.ZipFile(zipped) as z:
        names = z.namelist()
        assert names == ["温暖的金色黄昏胶片-50pct_33.cube", "温暖的金色黄昏胶片-50pct_hald.png",
                         *(f"photo-{i}-温暖的金色黄昏胶片-50pct.png" for i in (1, 2, 3))]
        assert z.read(names[0]) == lut and z.read(names[1]) == hald
        for name, photo in zip(names[2:], originals):
            graded = httpx.post(server.url + "/v1/apply", files={"image": (photo.name, photo.read_bytes()),
                                                                 "lut": ("look.cube", lut)})
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(z.read(name)))),
                                  np.asarray(Image.open(io.BytesIO(graded.content)))), name


def test_a_reference_photo_alone_gives_a_black_and_white_look(browser, server, tmp_path):
    reference = tmp_path / "reference.png"
    gradient_image(200, 150, seed=7).save(reference)
    start(browser, server, tmp_path, steps=4, prompt="", reference=reference, bw=True)
    assert browser.find_element(By.ID, "prompt-optional").is_displayed()  # the page says the prompt may be left out
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    assert not browser.find_element(By.ID, "strip").is_displayed()  # one photo: no strip
    assert "black and white" in text(browser, "scores")
    assert not browser.find_element(By.ID, "protect-skin").is_enabled()  # (no skin colour to keep in black and white)
    result = httpx.get(server.url + "/v1/retouch/get", params={"task_id": recent_id(browser)}).json()
    assert result["mode"] == "bw" and result["images"] == []
    assert "aimed at a reference photo" in result["cube"] and "prompt: none" in result["cube"]
    table = read_cube(result["cube"]).table
    assert (table == table[..., :1]).all()  # neutral: R = G = B at every node
    assert errors_in_console(browser) == []


def test_a_log_frame_is_graded_as_the_display_shows_it_with_a_look_lut(browser, server, tmp_path):
    """Footage from the page: the OCIO config's names listed, the choice sent, a log-to-log `look` LUT back."""
    start(browser, server, tmp_path, steps=4, footage={"input-space": "ARRI LogC3 (EI800)", "lut-kind": "look"})
    assert Select(browser.find_element(By.ID, "display")).first_selected_option.text == "sRGB - Display"
    assert Select(browser.find_element(By.ID, "view")).first_selected_option.text.startswith("ACES 2.0 - SDR")
    WebDriverWait(browser, 120, poll_frequency=0.05).until(lambda d: d.find_element(By.ID, "result").is_displayed())
    result = httpx.get(server.url + "/v1/retouch/get", params={"task_id": recent_id(browser)}).json()
    assert "# input: ARRI LogC3 (EI800)" in result["cube"] and "(the look alone)" in result["cube"]
    assert errors_in_console(browser) == []


def test_stop_button_stops_the_job(browser, server, tmp_path):
    start(browser, server, tmp_path, steps=5000)
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)
    wait.until(lambda d: iteration(d) > 0)
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda d: text(d, "state") == "stopped")
    task_id = recent_id(browser)
    assert httpx.post(server.url + "/v1/progress", json={"task_id": task_id}).json()["status"] == "cancelled"
    shot(browser, "web-stopped")


def test_a_text_file_gets_a_readable_error(browser, server, tmp_path):
    """Checked when chosen (by its type), and by the service (by its bytes): the error names the file."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    start(browser, server, tmp_path, steps=5, images=[notes])
    assert text(browser, "error") == "notes.txt is not a photo: choose JPEG, PNG, WebP, TIFF or BMP files."
    fake = tmp_path / "holiday.jpg"  # (a name that passes the page's check; the service reads the bytes)
    fake.write_text("not a photo either")
    start(browser, server, tmp_path, steps=5, images=[photos(tmp_path, [(320, 240)])[0], fake])
    error = WebDriverWait(browser, 30).until(lambda d: text(d, "error"))
    assert error.startswith("holiday.jpg: the file is not an image this service can read"), error
    shot(browser, "web-error")
    browser.set_window_size(390, 844)  # a phone: nothing wider than the screen
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    shot(browser, "web-phone")


def test_a_keyed_service_opens_the_page_and_asks_for_the_key_once(browser, tmp_path_factory, tmp_path):
    with serving(tmp_path_factory.mktemp("keyed"), CLIPDLUT_API_KEY="s3cret", CLIPDLUT_PROGRESS_EVERY="1") as keyed:
        assert httpx.get(keyed.url + "/ui/").status_code == httpx.get(keyed.url + "/docs").status_code == 200
        start(browser, keyed, tmp_path, steps=8)  # the page loads without a key; its first call is refused
        wait = WebDriverWait(browser, 120, poll_frequency=0.05)
        assert "needs an API key" in wait.until(lambda d: text(d, "error"))
        assert browser.find_element(By.ID, "key-box").is_displayed()
        shot(browser, "web-api-key")
        browser.find_element(By.ID, "api-key").send_keys("s3cret")
        browser.find_element(By.CSS_SELECTOR, "#key-box button").click()
        assert not browser.find_element(By.ID, "key-box").is_displayed()
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
        assert iteration(browser) == 8
        task_id = recent_id(browser)
        for call in (lambda h: httpx.get(keyed.url + "/v1/retouch/status", params={"task_id": task_id}, headers=h),
                     lambda h: httpx.get(keyed.url + "/v1/retouch/get", params={"task_id": task_id}, headers=h),
                     lambda h: httpx.put(keyed.url + "/v1/retouch/cancel", params={"task_id": task_id}, headers=h)):
            assert call({}).status_code == 401  # the task routes answered from the store are keyed too
            assert call({"Authorization": "Bearer s3cret"}).status_code == 200
        browser.refresh()  # kept in the browser: its calls carry it, and it is not asked again
        assert browser.execute_script("return localStorage.getItem('clipdlut.api-key')") == "s3cret"
        browser.find_element(By.CSS_SELECTOR, "#recent button").click()
        wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
        assert not browser.find_element(By.ID, "key-box").is_displayed() and not text(browser, "error")
        assert browser.find_element(By.ID, "key-kept").is_displayed()
        browser.find_element(By.ID, "forget-key").click()  # (a shared computer: the next user is asked again)
        assert browser.execute_script("return localStorage.getItem('clipdlut.api-key')") is None
        assert not browser.find_element(By.ID, "key-kept").is_displayed()
        browser.refresh()
        browser.find_element(By.CSS_SELECTOR, "#recent button").click()
        assert "needs an API key" in wait.until(lambda d: text(d, "error"))


def image_bytes(driver, element_id: str, attribute: str = "src") -> bytes:
    """The bytes behind an image element's (blob) URL, or a link's (``attribute="href"``)."""
    return base64.b64decode(driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById(arguments[0])[arguments[1]]).then((r) => r.arrayBuffer()).then((b) => {"
        "  let s = ''; new Uint8Array(b).forEach((x) => { s += String.fromCharCode(x); }); done(btoa(s)); });",
        element_id, attribute))


def shown_job(driver) -> tuple[bytes, bytes, bytes, bytes]:
    """What the page shows of a job: the before and after photos, and its two downloads held in the page (the
    graded image and the .cube)."""
    return (image_bytes(driver, "before"), image_bytes(driver, "after"), image_bytes(driver, "dl-image", "href"),
            image_bytes(driver, "dl-cube", "href"))


def test_a_reload_resumes_a_running_job_and_a_reopened_one_compares_with_its_own_photos(browser, server, tmp_path):
    """Issue 26, part 1: a job running when the page is reloaded is watched again to its result; a job reopened
    from Recent compares with the photo it graded (kept in the browser's IndexedDB), not with its result; where
    the browser no longer has that photo, compare and strength are off and the page says why."""
    first = photos(tmp_path / "first", [(240, 320)])
    wait = WebDriverWait(browser, 120, poll_frequency=0.05)
    start(browser, server, tmp_path, steps=8, images=first)  # a job followed from its submission to its result
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed() and text(d, "state") == "finished")
    live = shown_job(browser)

    original = photos(tmp_path, [(320, 240)])
    start(browser, server, tmp_path, steps=40, images=original)
    wait.until(lambda d: iteration(d) > 0)
    browser.refresh()  # mid-run
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    assert iteration(browser) == 40 and "finished" in text(browser, "recent")
    assert browser.find_element(By.CSS_SELECTOR, "#recent button img").get_attribute("src").startswith(
        "data:image/jpeg")  # (each job's thumbnail)
    assert image_bytes(browser, "before") == original[0].read_bytes()
    assert browser.find_element(By.ID, "strength").is_enabled()
    resumed = shown_job(browser)

    for k, (photo, shown) in enumerate([(original[0], resumed), (first[0], live)]):
        browser.refresh()
        browser.find_elements(By.CSS_SELECTOR, "#recent button")[k].click()
        wait.until(lambda d: d.find_element(By.ID, "result").is_displayed() and text(d, "state") == "finished")
        assert image_bytes(browser, "before") == photo.read_bytes()  # (not the graded photo a second time)
        assert image_bytes(browser, "before") != image_bytes(browser, "after")
        assert shown_job(browser) == shown  # the same before, after and downloads as when it was followed
        assert not browser.find_element(By.ID, "compare-note").is_displayed()

    browser.execute_script("indexedDB.deleteDatabase('clipdlut')")  # (as a browser clearing its storage would)
    browser.refresh()
    browser.find_element(By.CSS_SELECTOR, "#recent button").click()
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    assert browser.find_element(By.ID, "compare-note").is_displayed()
    assert not any(browser.find_element(By.ID, box).is_enabled() for box in ("strength", "split"))
    assert errors_in_console(browser) == []


def test_strength_moves_the_preview_of_a_24_megapixel_photo_within_100_ms(browser, server, tmp_path):
    """A camera-sized JPEG (6000 x 4000): it comes back a JPEG, and each move of the strength slider redraws the
    preview in the browser in under 100 ms (measured here), with no full-resolution render until a download."""
    y, x = np.mgrid[0:4000, 0:6000]
    rgb = np.stack([x * 255 // 6000, y * 255 // 4000, (x + y) * 255 // 10000], axis=-1).astype(np.uint8)
    big = tmp_path / "IMG_0001.jpg"
    Image.fromarray(rgb).save(big, quality=90)
    start(browser, server, tmp_path, steps=2, images=[big])
    wait = WebDriverWait(browser, 240, poll_frequency=0.1)
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    wait.until(lambda d: d.find_element(By.ID, "after-live").get_attribute("data-ready"))
    assert browser.find_element(By.ID, "dl-image").get_attribute("download") == "IMG_0001-温暖的金色黄昏胶片.jpg"
    phases = browser.execute_script("return window.phases")  # what the page said while the job ran, in order
    assert phases[0] == "reading the photos" and any(re.fullmatch(r"uploading: \d+%", p) for p in phases), phases
    assert "sent: the service is checking the photos" in phases and phases[-2:] == ["fetching the result",
                                                                                     "finished"], phases
    assert phases.index("rendering the full-resolution result") < len(phases) - 2, phases  # (seconds, for 24 MP)
    viewer_fits_the_window_and_zooms_to_one_to_one(browser)
    times = [browser.execute_script("const s = document.getElementById('strength'); s.value = arguments[0];"
                                    "s.dispatchEvent(new Event('input')); return window.lastStrengthDrawMs;", v)
             for v in (0.3, 0.6, 0.9, 1.5)]
    print(f"strength redraws of a 24 MP photo's preview: {times} ms")
    assert all(0 < ms < 100 for ms in times), (times, errors_in_console(browser))
    assert browser.find_element(By.ID, "after-live").is_displayed()


def rect(driver, element_id: str) -> dict:
    return driver.execute_script("return document.getElementById(arguments[0]).getBoundingClientRect().toJSON()",
                                 element_id)


def viewer_fits_the_window_and_zooms_to_one_to_one(browser) -> None:
    """A 6000 x 4000 photo fits a 1440 x 900 window with the controls beside it; 1:1 (the Z key) shows one photo
    pixel per screen pixel in the same frame, dragged to pan; on a phone the controls are below the photo."""
    browser.set_window_size(1440, 900)
    inner = browser.execute_script("return [window.innerWidth, window.innerHeight, window.devicePixelRatio]")
    fit = rect(browser, "before")
    assert 0 < fit["width"] <= inner[0] and 0 < fit["height"] <= inner[1], (fit, inner)
    assert rect(browser, "strength")["left"] >= rect(browser, "compare")["right"]  # (beside the photo)
    ActionChains(browser).send_keys("z").perform()
    assert browser.find_element(By.ID, "zoom").get_attribute("aria-pressed") == "true"
    assert rect(browser, "before")["width"] == pytest.approx(6000 / inner[2], abs=1)
    frame = rect(browser, "viewport")
    assert (frame["width"], frame["height"]) == pytest.approx((fit["width"], fit["height"]), abs=1)
    left = browser.execute_script("return document.getElementById('viewport').scrollLeft")
    viewport = browser.find_element(By.ID, "viewport")
    ActionChains(browser).move_to_element_with_offset(viewport, -100, 0).click_and_hold().move_by_offset(
        -150, -40).release().perform()  # (beside the handle, which is in the middle: dragging it moves the split)
    assert browser.execute_script("return document.getElementById('viewport').scrollLeft") == pytest.approx(
        left + 150, abs=2)
    shot(browser, "web-one-to-one")
    ActionChains(browser).send_keys("z").perform()
    assert rect(browser, "before")["width"] == pytest.approx(fit["width"], abs=1)
    browser.set_window_size(390, 844)
    assert rect(browser, "strength")["top"] >= rect(browser, "compare")["bottom"]  # (below the photo)
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    browser.set_window_size(1280, 2300)


def steps_with_four_or_more_jobs(server) -> float:
    """How many optimizer steps have advanced four jobs or more together (the service's batching metric)."""
    text = httpx.get(server.url + "/metrics").text
    count = float(re.search(r"^clipdlut_optimizer_batch_jobs_count (\S+)$", text, re.M).group(1))
    return count - float(re.search(r'^clipdlut_optimizer_batch_jobs_bucket\{le="3.0"\} (\S+)$', text, re.M).group(1))


def test_four_prompts_give_four_candidate_looks_graded_together(browser, server, tmp_path):
    """Several looks at once: one job a prompt, sent together, so the optimizer steps them together; a strip shows
    each look's preview and state, and a click shows that look's result."""
    before = steps_with_four_or_more_jobs(server)
    looks = ("冷色调的清晨", "赛博朋克风格的夜晚城市", "faded Fujifilm slide film")
    start(browser, server, tmp_path, steps=30, prompt="温暖的金色黄昏", more_looks=looks)
    wait = WebDriverWait(browser, 180, poll_frequency=0.1)
    def captions(d) -> list[str]:  # (read at once: the strip is redrawn as the looks progress)
        return d.execute_script("return [...document.querySelectorAll('#candidates figcaption')]"
                                ".map((c) => c.textContent)")

    wait.until(lambda d: len(captions(d)) == 4 and all(c.endswith("· finished") for c in captions(d)))
    assert [c.split(" · ")[0] for c in captions(browser)] == ["温暖的金色黄昏", *looks]
    shot(browser, "web-candidates")
    assert steps_with_four_or_more_jobs(server) > before  # (the four were optimized together)
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed())
    browser.execute_script("document.querySelectorAll('#candidates button')[2].click()")  # the third look
    wait.until(lambda d: d.find_element(By.ID, "result").is_displayed()
               and "赛博朋克风格的夜晚城市" in (d.find_element(By.ID, "dl-cube").get_attribute("download") or ""))
    recent = browser.execute_script("return JSON.parse(localStorage.getItem('clipdlut.recent'))")[:4]
    assert sorted(e["prompt"] for e in recent) == sorted(["温暖的金色黄昏", *looks])  # (each a task of its own)
    assert errors_in_console(browser) == []
