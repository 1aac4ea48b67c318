"""Assets work offline (vendored, licensed, pinned), and the palette meets WCAG AA contrast."""

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from fedvla.web.pages.templating import STATIC_DIR, TEMPLATES_DIR
from tests.web.conftest import Browser, html

ROOT = Path(__file__).resolve().parents[2]

VENDORED = {
    "htmx.org": ["htmx/htmx.min.js", "htmx/LICENSE"],
    "htmx-ext-sse": ["htmx-ext-sse/sse.js", "htmx-ext-sse/LICENSE"],
    "uplot": ["uplot/uPlot.iife.min.js", "uplot/uPlot.min.css", "uplot/LICENSE"],
}


def test_vendored_assets_match_the_lock_file() -> None:
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    versions = dict(
        line.split() for line in (STATIC_DIR / "vendor" / "VERSIONS").read_text().splitlines()
    )
    for package, files in VENDORED.items():
        assert versions[package] == lock[f"node_modules/{package}"]["version"]
        for name in files:
            assert (STATIC_DIR / "vendor" / name).stat().st_size > 0, name


def test_templates_load_nothing_from_the_internet() -> None:
    for template in Path(TEMPLATES_DIR).glob("*.html"):
        text = template.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), template.name


def test_every_asset_a_page_names_is_served(
    browser: Callable[..., Browser], secrets: object
) -> None:
    b = browser(secrets.viewer)  # type: ignore[attr-defined]
    soup = html(b.get("/experiments"))
    urls = [tag["src"] for tag in soup.find_all("script", src=True)]
    urls += [tag["href"] for tag in soup.find_all("link", rel="stylesheet")]
    assert len(urls) >= 5
    for url in urls:
        assert b.get(url).status_code == 200, url


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


CSS_VARS = dict(
    re.findall(r"--([a-z]+):\s*(#[0-9a-f]{6})", (STATIC_DIR / "css/app.css").read_text())
)


@pytest.mark.parametrize(
    ("text", "background"),
    [
        ("fg", "bg"), ("muted", "bg"), ("accent", "bg"), ("danger", "bg"), ("ok", "bg"),
        ("warn", "bg"), ("fg", "panel"), ("muted", "panel"), ("bg", "accent"), ("bg", "danger"),
    ],
)  # fmt: skip
def test_palette_meets_wcag_aa(text: str, background: str) -> None:
    assert contrast(CSS_VARS[text], CSS_VARS[background]) >= 4.5


def test_contrast_formula() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") < 4.5
