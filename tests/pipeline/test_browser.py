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
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


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
    assert all(re.fullmatch(r"-?\d+(,\d{3})*(\.\d+)?(e-?\d+)?%?|nan", text) for text in pasted), pasted
    assert sum(text != "nan" for text in pasted) >= 10
    body = browser.find_element(By.TAG_NAME, "main").text
    assert "our best BIS" in body
    assert "ceiling" in body


def test_notebook_pages_launch_their_committed_notebook_on_binder_and_colab(smoke_book, browser):
    """The launch buttons of each executed notebook's page point at that notebook's path in the
    repository (whether the reference run's notebook is committed there is the next test)."""
    published = sorted(p.stem for p in (smoke_book / "executed").glob("*.ipynb"))
    assert len(published) >= 7
    for stage in published:
        browser.get((smoke_book / "_build" / "html" / "executed" / f"{stage}.html").as_uri())
        links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);")
        for service in ("mybinder.org", "colab.research.google.com"):
            assert any(service in link and link.endswith(f"executed/{stage}.ipynb") for link in links), (stage, service)


def test_every_page_of_the_book_has_its_reference_notebook_committed():
    """Every executed page of the table of contents is committed under executed/, so the published
    book builds and its launch links resolve."""
    from backdoor_sae.pipeline.runner import BOOK_EXECUTED_DIR, REPO_ROOT

    pages = re.findall(r"file: executed/(\S+)", (REPO_ROOT / "_toc.yml").read_text())
    assert len(pages) >= 7
    missing = [page for page in pages if not (BOOK_EXECUTED_DIR / f"{page}.ipynb").exists()]
    assert not missing, f"not in the repository: {missing}"


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


#: An absolute path of the machine that ran or built the book (paths in the book are relative to
#: the repository, or named: <run_dir>, <python>, ~).
MACHINE_PATH = re.compile(r"(?<![\w.~>-])/(?:tmp|work|home|root|Users)/[\w.-]+(?:/[\w.-]+)*")


def test_no_page_names_a_path_of_the_machine_that_ran_it(smoke_book):
    """Not in any HTML page, nor in the notebooks the pages offer for download. The smoke run lies
    outside the repository (a pytest temporary folder), so its paths must be named <run_dir>; the bug
    this catches is papermill's injected run_dir, a print such as 'trained /tmp/.../finetune/lora',
    a warning naming site-packages, or papermill's metadata leaking the machine's folders."""
    html = smoke_book / "_build" / "html"
    published = list(html.rglob("*.html")) + list((html / "_sources").rglob("*.ipynb"))
    assert len(published) >= 12
    leaks = {p.relative_to(html).as_posix(): found for p in published if (found := MACHINE_PATH.findall(p.read_text()))}
    assert not leaks, {page: found[:3] for page, found in leaks.items()}


def executed_pages(smoke_book) -> list[Path]:
    pages = sorted((smoke_book / "_build" / "html" / "executed").glob("*.html"))
    assert len(pages) >= 7
    return pages


def test_notebook_pages_fold_their_setup_one_click_away_and_open_with_prose(smoke_book, browser):
    """The parameters cell, papermill's injected cell and the imports are folded (tag hide-input):
    their code is hidden, a click shows it. Before the first code a reader sees, the page has prose.
    The bug this catches: a notebook page that opens with walls of code."""
    for page in executed_pages(smoke_book):
        browser.get(page.as_uri())
        for tag in ("tag_parameters", "tag_injected-parameters"):
            cells = browser.find_elements(By.CSS_SELECTOR, f"main div.cell.{tag}")
            assert len(cells) == 1, (page.name, tag)
            code = cells[0].find_element(By.CSS_SELECTOR, "div.cell_input")
            assert not code.is_displayed(), f"{page.name}: the {tag} cell's code is not folded"
            toggle = cells[0].find_element(By.CSS_SELECTOR, "details.hide.above-input > summary")
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", toggle)
            toggle.click()
            WebDriverWait(browser, 10).until(lambda _: code.is_displayed(), f"{page.name}: the {tag} cell does not unfold")
            assert "run_dir" in code.text
        folded = browser.find_elements(By.CSS_SELECTOR, "main div.cell.tag_hide-input")
        assert len(folded) >= 3, page.name  # parameters, injected parameters, imports and setup
        browser.get(page.as_uri())  # folded again
        first_code, first_prose = browser.execute_script("""
            const all = Array.from(document.querySelectorAll('main div.cell_input, main section p'));
            const shown = e => e.offsetParent !== null;
            const code = all.findIndex(e => e.matches('div.cell_input') && shown(e));
            const prose = all.findIndex(e => e.matches('p') && !e.closest('div.cell') && shown(e) && e.textContent.trim().length > 40);
            return [code, prose];""")
        assert first_prose != -1 and (first_code == -1 or first_prose < first_code), page.name


def test_the_results_chapter_opens_with_computed_verdicts_and_the_headline_figure(smoke_book, browser):
    """The first section is the answer: at most six sentences whose outcome words are glued from the
    claims (never typed), then the headline figures, which decode, before any table. The bug this
    catches: a results page whose first verdict comes after a table, a summary that grows into a
    list of detectors, or an outcome word typed by hand."""
    browser.get((smoke_book / "_build" / "html" / "book" / "results.html").as_uri())
    sections = browser.find_elements(By.CSS_SELECTOR, "main section section")
    first = sections[0]
    assert first.find_element(By.TAG_NAME, "h2").text.strip().startswith("The answer in short")
    answer = first.find_element(By.CSS_SELECTOR, "div.answer-in-short")
    sentences = [t for t in re.split(r"(?<=[.])\s+(?=[A-Z])", answer.text.strip()) if t]
    assert 4 <= len(sentences) <= 6, sentences
    word = re.compile(r"(not in this run's grid|not measured in this run|undetermined|(supported|not supported|"
                      r"supported in \d+ of \d+ layers)( \(a tie at the ceiling\))? \((one|\d+) fine-tune seeds?"
                      r"(;[^()]*(\([^()]*\)[^()]*)?)?\))")  # then where the seeds disagree, and undetermined layers
    glued = [e.text.strip() for e in answer.find_elements(By.CSS_SELECTOR, "span.output.text_html, span.pasted-inline")]
    outcomes = [w for w in glued if word.fullmatch(w)]
    assert len(outcomes) >= 10, glued
    figures = first.find_elements(By.CSS_SELECTOR, "div.headline-figure img")
    assert len(figures) == 2
    for figure in figures:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 400;", figure)
    assert not first.find_elements(By.TAG_NAME, "table"), "a table before the answer"
    order = browser.execute_script("""
        const fig = document.querySelector('main div.headline-figure');
        const table = document.querySelector('main table');
        return !table || (fig.compareDocumentPosition(table) & Node.DOCUMENT_POSITION_FOLLOWING) !== 0;""")
    assert order, "the headline figure comes after a table"


def test_no_rendered_table_shows_nan(smoke_book, browser):
    """A value that does not exist shows as '–' (backdoor_sae.common.display), never 'NaN' or 'nan'.

    One exception, in the smoke profile only: the results chapter's backdoor table pastes rates
    with glue:text, and the tiny random model writes no code that runs, so its rates among valid
    code have nothing to count (myst-nb formats a missing number as 'nan'); the reference run has
    every one of them (the test of the cpu book's numbers is its reference run)."""
    html = smoke_book / "_build" / "html"
    n_tables = 0
    for page in chapter_pages(html):
        browser.get(page.as_uri())
        cells = browser.execute_script("""
            return Array.from(document.querySelectorAll('main table td, main table th')).map(c =>
                [c.textContent.trim(), c.querySelector('.pasted-text') !== null]);""")
        n_tables += len(browser.find_elements(By.CSS_SELECTOR, "main table"))
        for text, pasted_number in cells:
            if pasted_number and page.name == "results.html":
                continue
            assert text.lower() != "nan", f"{page.name}: a table cell shows {text!r}"
    assert n_tables >= 15


def test_the_dashboard_page_shows_highlighted_tokens_with_their_values_and_its_figures(smoke_book, browser):
    """The appendix's latent dashboards: highlighted tokens carry their value in their title and the
    strongest are bold and underlined (not colour alone); every dashboard has its histogram and
    header-sweep figures, drawn (not empty); and the page runs no script of its own."""
    page = smoke_book / "_build" / "html" / "executed" / "08_dashboards.html"
    assert page.exists()
    browser.get(page.as_uri())
    dashboards = browser.find_elements(By.CSS_SELECTOR, "section.bsd-dash")
    assert len(dashboards) >= 8  # two layers x two architectures x at least two named latents, per fine-tune
    marks = browser.find_elements(By.CSS_SELECTOR, "pre.bsd-text mark")
    assert marks
    for mark in marks[:50]:
        assert re.search(r": -?\d", mark.get_attribute("title")), mark.get_attribute("title")
    strong = browser.find_elements(By.CSS_SELECTOR, "pre.bsd-text mark.s")
    assert strong
    style = browser.execute_script(
        "const s = getComputedStyle(arguments[0]); return [s.fontWeight, s.textDecorationLine];", strong[0])
    assert int(style[0]) >= 700 and "underline" in style[1]
    for section in dashboards:
        for kind in ("bsd-hist", "bsd-sweep"):
            figure = section.find_elements(By.CSS_SELECTOR, f"svg.{kind}")
            assert figure, f"{section.get_attribute('id')} has no {kind}"
            size = figure[0].size
            assert size["width"] > 100 and size["height"] > 50
            assert figure[0].find_elements(By.CSS_SELECTOR, "rect, circle")
        assert section.find_elements(By.CSS_SELECTOR, "table.bsd-lens tbody tr")
    scripts = browser.execute_script(
        "return Array.from(document.querySelectorAll('.bsd-page script')).length;")
    assert scripts == 0
