"""The rendered book in a real headless browser (Debian's chromium, driven by selenium).

`.ci/run` installs chromium and chromedriver and sets REQUIRE_BROWSER=1, so that in CI a missing
browser fails this test instead of skipping it.
"""

import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("REQUIRE_BROWSER"):
        raise RuntimeError("REQUIRE_BROWSER is set but chromium/chromedriver are not installed")
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                 "--window-size=1280,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def chapter_pages(html: Path) -> list[Path]:
    toc = (html / "book" / "intro.html").read_text()
    pages = {html / "book" / "intro.html"}
    for href in re.findall(r'class="reference internal" href="([^"#]+)', toc):
        pages.add((html / "book" / href).resolve())
    return sorted(pages)


def test_every_chapter_loads_with_decoded_figures_and_no_broken_internal_link(smoke_book, browser, tmp_path):
    html = smoke_book / "_build" / "html"
    pages = chapter_pages(html)
    assert len(pages) >= 11  # intro, background, six executed notebooks, results, reproduce, teaching, references
    n_images = 0
    for page in pages:
        assert page.exists(), page
        browser.get(page.as_uri())
        title = browser.find_element(By.CSS_SELECTOR, "main h1").get_attribute("textContent").strip()
        assert title, f"{page.name} has no title"
        images = browser.execute_script(
            "return Array.from(document.querySelectorAll('main img')).map(i => [i.src, i.complete, i.naturalWidth]);")
        for src, complete, width in images:
            assert complete and width > 0, f"{page.name}: image {src} does not decode"
        n_images += len(images)
        links = browser.execute_script(
            "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);")
        for link in links:
            url = urlparse(link)
            if url.scheme != "file":
                continue
            target = Path(unquote(url.path))
            assert target.exists(), f"{page.name}: broken internal link {link}"
    assert n_images >= 10  # the executed notebooks' figures
    browser.save_screenshot(str(tmp_path / "last_page.png"))


def test_the_results_chapter_shows_the_glued_numbers(smoke_book, browser):
    browser.get((smoke_book / "_build" / "html" / "book" / "results.html").as_uri())
    pasted = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".pasted-text")]
    assert len(pasted) >= 10
    # "nan": a rate with nothing to count (the tiny smoke model writes no code that runs)
    assert all(re.fullmatch(r"-?\d+(\.\d+)?%?|nan", text) for text in pasted), pasted
    assert sum(text != "nan" for text in pasted) >= 10
    body = browser.find_element(By.TAG_NAME, "main").text
    assert "our best BIS" in body
    assert "ceiling" in body


def test_notebook_pages_launch_their_committed_notebook_on_binder_and_colab(smoke_book, browser):
    """The launch buttons of each executed notebook's page point at that notebook's path in the
    repository, and the reference run's executed notebook is committed there, so the link resolves."""
    from backdoor_sae.runner import BOOK_EXECUTED_DIR

    published = sorted(p.stem for p in (smoke_book / "executed").glob("*.ipynb"))
    assert len(published) >= 7
    for stage in published:
        browser.get((smoke_book / "_build" / "html" / "executed" / f"{stage}.html").as_uri())
        links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);")
        for service in ("mybinder.org", "colab.research.google.com"):
            assert any(service in link and link.endswith(f"executed/{stage}.ipynb") for link in links), (stage, service)
        assert (BOOK_EXECUTED_DIR / f"{stage}.ipynb").exists(), f"executed/{stage}.ipynb is not in the repository"


def test_every_sidebar_entry_is_named_apart(smoke_book, browser):
    """The LoRA and full-rank pages come from one notebook with one heading; the sidebar still tells
    them apart (their titles in _toc.yml)."""
    browser.get((smoke_book / "_build" / "html" / "book" / "intro.html").as_uri())
    entries = [e.get_attribute("textContent").strip()
               for e in browser.find_elements(By.CSS_SELECTOR, "nav.bd-links a.reference.internal")]
    assert len(entries) >= 10, entries
    assert len(set(entries)) == len(entries), entries
    assert "Inserting the backdoor (LoRA)" in entries and "Inserting the backdoor (full-rank)" in entries


def test_every_formula_is_typeset_from_the_book_itself(smoke_book, browser):
    """MathJax comes with the book (_static/mathjax), so formulas typeset without internet; the bug
    this catches is raw LaTeX such as \\( \\tau_j \\) left on a page."""
    import time

    html = smoke_book / "_build" / "html"
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists()
    typeset = 0
    for page in chapter_pages(html):
        source = page.read_text()
        assert "cdn.jsdelivr.net/npm/mathjax" not in source, page.name
        if 'class="math' not in source:
            continue
        browser.get(page.as_uri())
        for _ in range(100):  # MathJax typesets asynchronously after the page loads
            done = browser.execute_script(
                "return window.MathJax && MathJax.startup && MathJax.startup.promise ? "
                "document.querySelectorAll('mjx-container').length : 0")
            if done:
                break
            time.sleep(0.1)
        text = browser.find_element(By.TAG_NAME, "main").text
        assert done and "\\(" not in text and "\\[" not in text, page.name
        typeset += 1
    assert typeset >= 3  # background, the scoring notebook, the dictionaries notebook at least
