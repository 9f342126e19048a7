"""The built documentation site in a real browser: a gallery card per registered model with
its image loaded, every internal link resolving, tutorial pages showing their figures, the
search finding a model by its paper's title, and no page logging a JavaScript error.

Run by ``make docs-check`` (after ``make docs``); screenshots of the gallery and of a
tutorial are saved in ``build/screenshots/``."""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import ARTIFACTS

#: the tutorial whose page is photographed
TUTORIAL = "vae_digits"


def _models():
    import zoo

    return {name: zoo.get(name) for name in zoo.list_models()}


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("index.html") if "assets" not in p.parts)


def _url(site: Path, base_url: str, page: Path) -> str:
    return urljoin(base_url, page.parent.relative_to(site).as_posix() + "/").replace("/./", "/")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if value and (tag, key) in {("a", "href"), ("img", "src"), ("link", "href"),
                                        ("script", "src")}:  # fmt: skip
                self.targets.append(value)


def _resolves(site: Path, page: Path, target: str) -> bool:
    parsed = urlparse(target)
    if parsed.scheme or parsed.netloc or target.startswith(("#", "data:", "mailto:")):
        return True  # external or in-page: not a file of the site
    path = (page.parent / unquote(parsed.path)).resolve()
    return path.is_file() or (path / "index.html").is_file()


#: resolves once the page has typeset its math (MathJax 2's queue) and loaded its fonts, so a
#: page's errors are read on that page (leaving it earlier aborts its font requests, which
#: the next page would then log)
_SETTLED = """
const done = arguments[arguments.length - 1];
const math = (window.MathJax && window.MathJax.Hub)
  ? new Promise((resolve) => window.MathJax.Hub.Queue(resolve)) : Promise.resolve();
math.then(() => (document.fonts ? document.fonts.ready : null)).then(() => done(true));
"""


#: what MathJax 2 itself logs in today's Chrome on any page with math, none of it the site's
#: doing: its font-loading probe (an @font-face at about:blank, which Chrome blocks) and its
#: requests for TeX web fonts that the packaged MathJax does not ship (the glyphs then come
#: from STIX-Web, the font it does ship)
MATHJAX_NOISE = (
    "Access to font at 'about:blank'",
    "about:blank - Failed to load resource",
    "/assets/mathjax/fonts/HTML-CSS/TeX/otf/",
)


def _js_errors(browser) -> list[str]:
    return [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and not any(noise in e["message"] for noise in MATHJAX_NOISE)
    ]


def _load(browser, url: str) -> None:
    """Open ``url`` and wait until it has settled (see ``_SETTLED``)."""
    browser.get(url)
    browser.set_script_timeout(30)
    browser.execute_async_script(_SETTLED)


def test_gallery_has_a_card_with_a_loaded_image_for_every_model(browser, base_url):
    browser.get(base_url + "gallery/")
    cards = browser.find_elements(By.CSS_SELECTOR, ".grid.cards > ul > li")
    names = {card.find_element(By.CSS_SELECTOR, "a strong, strong a").text for card in cards}
    assert names == set(_models()), f"cards {sorted(names)} != models {sorted(_models())}"
    for card in cards:
        for img in card.find_elements(By.TAG_NAME, "img"):
            browser.execute_script("arguments[0].scrollIntoView();", img)
        name = card.find_element(By.CSS_SELECTOR, "a strong, strong a").text
        images = card.find_elements(By.TAG_NAME, "img")
        assert images, f"the gallery card of '{name}' has no image"
        for img in images:
            WebDriverWait(browser, 10).until(lambda _, i=img: i.get_property("complete"))
            width = img.get_property("naturalWidth")
            assert width and width > 0, (
                f"the image of '{name}' did not load: {img.get_attribute('src')}"
            )
    browser.execute_script("window.scrollTo(0, 0);")
    browser.save_screenshot(str(ARTIFACTS / "gallery.png"))


def test_every_internal_link_resolves(site):
    broken = []
    for page in _pages(site):
        parser = _Links()
        parser.feed(page.read_text(errors="replace"))
        broken += [f"{page.relative_to(site)} -> {t}" for t in parser.targets
                   if not _resolves(site, page, t)]  # fmt: skip
    assert not broken, "broken internal links:\n" + "\n".join(broken[:30])


def test_a_tutorial_page_shows_its_figures(browser, base_url):
    browser.get(base_url + f"tutorials/{TUTORIAL}/")
    figures = [img for img in browser.find_elements(By.CSS_SELECTOR, "img")
               if (img.get_attribute("src") or "").startswith("data:image/png")]  # fmt: skip
    assert figures, f"the {TUTORIAL} tutorial page shows no figure"
    assert all(img.get_property("naturalWidth") > 0 for img in figures)
    browser.save_screenshot(str(ARTIFACTS / f"tutorial-{TUTORIAL}.png"))


def test_search_finds_a_model_by_its_paper_title(browser, base_url):
    from zoo.papers import PAPERS

    name, cls = next((n, c) for n, c in _models().items() if c.paper is not None)
    title = next(p.title for p in PAPERS if p.number == cls.paper)
    browser.get(base_url)
    box = WebDriverWait(browser, 10).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "input.md-search__input"))
    )
    box.click()
    words = [w for w in re.split(r"[^A-Za-z0-9]+", title) if len(w) > 3]  # lunr's syntax aside
    box.send_keys(" ".join(words[:5]))
    box.send_keys(Keys.SPACE)
    deadline = time.time() + 20
    hrefs: list[str] = []
    while time.time() < deadline:
        hrefs = [a.get_attribute("href") or "" for a in
                 browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")]  # fmt: skip
        if any(f"/models/{name}/" in h for h in hrefs):
            break
        time.sleep(0.3)
    assert any(f"/models/{name}/" in h for h in hrefs), (
        f"searching for '{title}' did not find models/{name}/; results: {hrefs[:5]}"
    )


#: the site's sections; "other" holds the home, gallery, papers and performance pages
GROUPS = ("models", "api", "tutorials", "guides", "results")


def _group(site: Path, page: Path) -> str:
    parts = page.relative_to(site).parts
    return parts[0] if len(parts) > 1 and parts[0] in GROUPS else "other"


@pytest.mark.parametrize("group", ["models", "api", "tutorials", "guides", "results", "other"])
def test_no_page_logs_a_javascript_error(browser, base_url, site, group):
    pages = _pages(site)
    chosen = [p for p in pages if _group(site, p) == group]
    assert chosen, f"the site has no page in '{group}'"
    browser.get_log("browser")  # drop what earlier tests left
    errors = []
    for page in chosen:
        _load(browser, _url(site, base_url, page))
        errors += [f"{page.relative_to(site)}: {m}" for m in _js_errors(browser)]
    assert not errors, "JavaScript errors:\n" + "\n".join(errors[:20])


def test_a_page_error_is_seen_past_the_mathjax_allowance(browser, base_url):
    """The check can fail: a missing page and a script error are reported, MATHJAX_NOISE
    notwithstanding."""
    browser.get_log("browser")
    browser.get(base_url + "no-such-page/")
    browser.execute_script("setTimeout(() => { throw new Error('zoo-site-check'); }, 0);")
    seen: list[str] = []

    def both_reported(_) -> bool:
        seen.extend(_js_errors(browser))
        return any("404" in e for e in seen) and any("zoo-site-check" in e for e in seen)

    WebDriverWait(browser, 10).until(both_reported)
