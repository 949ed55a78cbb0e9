"""The course website in a real browser: Debian's Chromium, the site served on 127.0.0.1.

Every page loads with no console error, no failed request and no request leaving the
machine; each lesson shows its figures and its math typeset by the site's own MathJax;
the search page finds a word. Screenshots of the landing page and of a lesson go to
tests/browser/artifacts/.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from .conftest import lessons

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1280, "height": 900}
SCREENSHOT_LESSON = "06_the_cliff"  # the lesson shown in the README (first lesson if renamed)
SEARCH_WORD = "cliff"

WAIT_FOR_MATH = """async () => {
    if (!document.querySelector('script[src*="mathjax"]')) return false;
    for (let i = 0; i < 600 && !(window.MathJax && window.MathJax.startup
                                 && window.MathJax.startup.promise); i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await window.MathJax.startup.promise;
    return true;
}"""

BROKEN_IMAGES = """() => Array.from(document.images)
    .filter((image) => !image.complete || image.naturalWidth === 0)
    .map((image) => image.getAttribute('src'))"""

MATH_STATE = """() => {
    const math = Array.from(document.querySelectorAll('.math'));
    const clone = document.querySelector('main, body').cloneNode(true);
    clone.querySelectorAll('pre, code, script, style, textarea, mjx-container')
        .forEach((node) => node.remove());
    return {
        spans: math.length,
        typeset: math.filter((node) => node.querySelector('mjx-container')).length,
        errors: document.querySelectorAll('mjx-merror').length,
        text: clone.textContent,
    };
}"""

# Raw TeX left in the text: \( \[ $$, or $...$ holding a TeX character.
RAW_TEX = re.compile(r"\\\(|\\\[|\$\$|\$[^$\s][^$\n]*?[\\^_{}][^$\n]*?\$")


class Visitor:
    """One browser page that records everything going wrong while it visits URLs."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport=VIEWPORT, color_scheme="light")
        self.problems: list[str] = []
        self.context.route("**/*", self._only_this_machine)
        self.page = self.context.new_page()
        self.page.on(
            "console",
            lambda m: m.type == "error" and self.problems.append(f"console error: {m.text}"),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on(
            "response",
            lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"),
        )
        self.page.on("requestfailed", self._request_failed)

    def _only_this_machine(self, route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.problems.append(f"request left the machine: {route.request.url}")
            route.abort()

    def _request_failed(self, request) -> None:
        # ERR_ABORTED: the next navigation cancelled it (a late favicon); a missing file
        # shows up as an HTTP error above instead.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"request failed: {request.url} ({request.failure})")

    def visit(self, url: str) -> bool:
        """Open ``url`` and wait for its math; True if the page has math."""
        self.page.goto(url, wait_until="load")
        has_math = self.page.evaluate(WAIT_FOR_MATH)
        self.page.wait_for_load_state("networkidle")
        return has_math

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visitor(browser):
    visitor = Visitor(browser)
    yield visitor
    visitor.close()


def test_every_page_loads_without_errors_or_broken_images(built_site, site_url, visitor):
    failures = []
    for path in built_site.pages():
        relative = path.relative_to(built_site.root).as_posix()
        visitor.problems.clear()
        visitor.visit(f"{site_url}/{relative}")
        broken = visitor.page.evaluate(BROKEN_IMAGES)
        failures += [f"{relative}: {p}" for p in visitor.problems]
        failures += [f"{relative}: broken image {src}" for src in broken]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("notebook", lessons(), ids=lambda p: p.stem)
def test_lesson_shows_its_figures_and_typeset_math(built_site, site_url, visitor, notebook):
    cells = built_site.notebook_as_built(notebook.stem)["cells"]
    figures = sum(
        "image/png" in o.get("data", {})
        for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
    )  # fmt: skip
    markdown = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    has_math = visitor.visit(f"{site_url}/notebooks/{notebook.stem}.html")
    assert visitor.problems == []

    images = visitor.page.locator(".cell_output img:not(.live-overlay)")  # a live panel's
    assert images.count() == figures  # overlay lies over its figure: one figure, not two
    for index in range(images.count()):
        image = images.nth(index)
        image.scroll_into_view_if_needed()
        size = image.evaluate("(i) => [i.naturalWidth, i.getBoundingClientRect().width]")
        assert size[0] > 50 and size[1] > 50, f"figure {index} is not shown: {size}"

    state = visitor.page.evaluate(MATH_STATE)
    if "$" in markdown:
        assert has_math and state["spans"] > 0, "the lesson's $...$ math became no math element"
    assert state["typeset"] == state["spans"], f"math left untypeset: {state}"
    assert state["errors"] == 0, "MathJax reported TeX errors"
    raw = RAW_TEX.findall(state["text"])
    assert not raw, f"raw TeX in the page text: {raw[:5]}"


def test_api_reference_typesets_the_docstring_math(site_url, visitor):
    assert visitor.visit(f"{site_url}/_api/clipping_lib.clip.html"), "no math on the clip page"
    state = visitor.page.evaluate(MATH_STATE)
    assert state["spans"] > 0 and state["typeset"] == state["spans"] and state["errors"] == 0
    assert visitor.page.locator("dt#clipping_lib\\.clip\\.clip_grad_norm_").count() == 1
    assert visitor.problems == []


def test_search_finds_a_word(built_site, site_url, visitor):
    """Typed into the search box as a reader would, the word finds the lessons about it."""
    expected = [
        stem for stem in built_site.lessons_as_built()
        if SEARCH_WORD in "".join(
            "".join(c["source"]) for c in built_site.notebook_as_built(stem)["cells"]
            if c["cell_type"] == "markdown"
        ).lower()
    ]  # fmt: skip
    assert expected, f"no lesson mentions {SEARCH_WORD!r}: pick another word"
    visitor.visit(f"{site_url}/index.html")
    visitor.page.keyboard.press("Control+k")
    box = visitor.page.locator("#pst-search-dialog input[name='q']")
    box.fill(SEARCH_WORD)
    box.press("Enter")
    visitor.page.wait_for_url("**/search.html?q=*")
    results = visitor.page.locator("#search-results ul.search li a")
    results.first.wait_for(timeout=30_000)
    found = {href.split("/")[-1].split(".html")[0] for href in results.evaluate_all(
        "(links) => links.map((a) => a.getAttribute('href'))")}  # fmt: skip
    assert set(expected) & found, f"searching {SEARCH_WORD!r} found {sorted(found)}"
    assert visitor.problems == []


def test_screenshots_of_the_landing_page_and_a_lesson(site_url, visitor, artifacts):
    visitor.visit(f"{site_url}/index.html")
    landing = visitor.page.screenshot(path=artifacts / "site_landing.png")
    stems = [n.stem for n in lessons()]
    lesson = SCREENSHOT_LESSON if SCREENSHOT_LESSON in stems else stems[0]
    visitor.page.set_viewport_size({"width": 1280, "height": 1200})
    visitor.visit(f"{site_url}/notebooks/{lesson}.html")
    # The lesson's first section from its heading: prose, math, code and a figure.
    visitor.page.locator("main section section h2").first.evaluate(
        "(heading) => { heading.scrollIntoView({block: 'start'}); window.scrollBy(0, -70); }"
    )
    shot = visitor.page.screenshot(path=artifacts / "site_lesson.png")
    assert len(landing) > 20_000 and len(shot) > 20_000  # a rendered page, not a blank one
    assert visitor.problems == []
