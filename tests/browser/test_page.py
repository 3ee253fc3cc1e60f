"""The page at / in headless Chromium, against the real service and the real default model.

Pixels are read back from the page's own <img> elements (a canvas in the page draws them), so
"the reconstruction shows a digit" is checked on what a person would see.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.browser_helpers import (
    PHONE,
    SERVED_VERSION,
    Visit,
    embedded_version_dir,
    playwright_expect,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser
expect = playwright_expect()

Stroke = Sequence[tuple[float, float]]  # points in units of the drawing pad's side
BAR = [(0.28, 0.26), (0.72, 0.26)]
DIAGONAL = [(0.72, 0.26), (0.45, 0.8)]
TWO = [
    (0.3, 0.33),
    (0.42, 0.22),
    (0.6, 0.24),
    (0.67, 0.38),
    (0.55, 0.55),
    (0.32, 0.78),
    (0.72, 0.78),
]
MOVES_PER_SEGMENT = 12

# The fraction of an <img>'s pixels that are ink (red channel > 127), and the fraction of the
# ink of one image that is also ink in another of the same size.
INK = """(img) => {
  const c = document.createElement('canvas');
  [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4) ink += d[i] > 127;
  return ink / (d.length / 4);
}"""
SHARED_INK = """([a, b]) => {
  const pixels = (img) => {
    const c = document.createElement('canvas');
    [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return ctx.getImageData(0, 0, c.width, c.height).data;
  };
  const [pa, pb] = [pixels(document.getElementById(a)), pixels(document.getElementById(b))];
  let ink = 0, shared = 0;
  for (let i = 0; i < pa.length; i += 4) {
    ink += pa[i] > 127;
    shared += pa[i] > 127 && pb[i] > 127;
  }
  return shared / ink;
}"""
LOADED = (
    "(id) => { const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; }"
)


def open_page(visit: Visit, url: str) -> Page:
    visit.page.goto(url + "/")
    expect(visit.page.locator("#model-version")).not_to_have_text("…")
    return visit.page


def draw(page: Page, *strokes: Stroke) -> None:
    """Draw strokes on the pad with mouse events."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=MOVES_PER_SEGMENT)
        page.mouse.up()


def loaded(page: Page, image_id: str) -> str:
    """Wait for the <img> to hold a decoded image; return its src."""
    page.wait_for_function(LOADED, arg=image_id)
    return page.locator(f"#{image_id}").get_attribute("src") or ""


def ink(page: Page, image_id: str) -> float:
    loaded(page, image_id)
    return float(page.locator(f"#{image_id}").evaluate(INK))


def reconstructions(visit: Visit) -> int:
    return sum(url.endswith("/v1/reconstruct") for url in visit.requests)


def test_drawing_shows_the_input_the_model_saw_and_its_reconstruction(
    visit: Callable[..., Visit], live_url: str
) -> None:
    visitor = visit()
    page = open_page(visitor, live_url)
    status = page.locator("#draw-status")
    draw(page, BAR)
    expect(status).to_have_text(f"Reconstructed by model version {SERVED_VERSION}.")
    first = loaded(page, "recon")
    # Debounced: one stroke of many mouse moves is a request or two, not one per move.
    assert 1 <= reconstructions(visitor) <= 3
    bar_ink = ink(page, "seen")

    draw(page, DIAGONAL)  # the same drawing, now a 7: the reconstruction follows
    page.wait_for_function(
        "(src) => document.getElementById('recon').src !== src", arg=first, timeout=10_000
    )
    expect(status).to_have_text(f"Reconstructed by model version {SERVED_VERSION}.")
    assert 0.05 < ink(page, "seen") < 0.5 and ink(page, "seen") != bar_ink
    assert 0.05 < ink(page, "recon") < 0.5
    # A trained model redraws most of the input's ink.
    assert page.evaluate(SHARED_INK, ["seen", "recon"]) > 0.6
    assert "model version 7" in (page.locator("#recon").get_attribute("alt") or "")
    assert "input the model saw" in (page.locator("#seen").get_attribute("alt") or "")
    visitor.screenshot("draw")

    page.get_by_role("button", name="Clear").click()
    assert ink(page, "recon") == 0 and ink(page, "seen") == 0
    expect(page.locator("#draw-error")).to_be_hidden()


def test_a_fixed_seed_gives_the_same_grid_and_new_seed_another(
    visit: Callable[..., Visit], live_url: str
) -> None:
    page = open_page(visit(), live_url)
    status = page.locator("#sample-status")

    def sample(seed: str) -> str:
        page.get_by_label("Seed").fill(seed)
        page.get_by_role("button", name="Sample", exact=True).click()
        expect(status).to_have_text(
            f"9 digits from the fitted prior, seed {seed}, numbered left to right."
        )
        return loaded(page, "samples")

    page.get_by_label("How many").fill("9")
    page.get_by_label("Temperature").fill("0.8")
    grid = sample("42")
    box = page.locator("#samples").evaluate("(i) => [i.naturalWidth, i.naturalHeight]")
    assert box == [3 * 28 + 2 * 2] * 2  # 3x3 images of 28 pixels with 2-pixel gaps
    assert 0.03 < ink(page, "samples") < 0.5
    assert "9 digits sampled" in (page.locator("#samples").get_attribute("alt") or "")
    assert sample("43") != grid
    assert sample("42") == grid

    page.get_by_role("button", name="New seed").click()
    new_seed = page.get_by_label("Seed").input_value()
    expect(status).to_have_text(
        f"9 digits from the fitted prior, seed {new_seed}, numbered left to right."
    )
    assert new_seed != "42" and loaded(page, "samples") != grid


def test_the_digit_picker_and_the_prior_switch(visit: Callable[..., Visit], live_url: str) -> None:
    page = open_page(visit(), live_url)
    status = page.locator("#sample-status")
    page.get_by_label("How many").fill("4")
    page.get_by_label("Seed").fill("5")

    def sample(prior: str, digit: str, text: str) -> str:
        page.locator("#prior").select_option(prior)
        page.locator("#digit").select_option(digit)
        page.get_by_role("button", name="Sample", exact=True).click()
        expect(status).to_have_text(text)
        return loaded(page, "samples")

    threes = sample("", "3", "4 3s from the fitted prior, seed 5, numbered left to right.")
    assert "4 3s sampled" in (page.locator("#samples").get_attribute("alt") or "")
    sevens = sample("fitted", "7", "4 7s from the fitted prior, seed 5, numbered left to right.")
    standard = sample(
        "standard", "", "4 digits from the standard prior, seed 5, numbered left to right."
    )
    assert len({threes, sevens, standard}) == 3

    page.locator("#digit").select_option("3")
    page.get_by_role("button", name="Sample", exact=True).click()
    expect(page.locator("#sample-error")).to_contain_text("leave prior out or set prior=fitted")


def test_interpolation_between_two_drawings_and_between_two_samples(
    visit: Callable[..., Visit], live_url: str
) -> None:
    page = open_page(visit(), live_url)
    status = page.locator("#interpolate-status")
    strip = page.locator("#strip")
    draw(page, BAR, DIAGONAL)
    page.get_by_role("button", name="Use as A").click()
    page.get_by_role("button", name="Clear").click()
    draw(page, TWO)
    page.get_by_role("button", name="Use as B").click()
    loaded(page, "end-a")
    loaded(page, "end-b")
    page.get_by_label("Steps").fill("6")
    page.get_by_role("button", name="Interpolate").click()
    expect(status).to_have_text("From drawings A and B, left to right.")
    loaded(page, "strip")
    width, height = strip.evaluate("(i) => [i.naturalWidth, i.naturalHeight]")
    assert height == 3 * 28 and width > 5 * height  # six digits side by side, scale 3
    assert 0.03 < ink(page, "strip") < 0.5

    page.get_by_label("two samples").check()
    page.get_by_label("From sample no.").fill("99")
    page.get_by_role("button", name="Interpolate").click()
    expect(page.locator("#interpolate-error")).to_have_text(
        "Sample a grid first: its samples are the ends."
    )
    page.get_by_role("button", name="Sample", exact=True).click()
    expect(page.locator("#sample-status")).to_contain_text("16 digits")
    page.get_by_role("button", name="Interpolate").click()
    expect(page.locator("#interpolate-error")).to_contain_text("Sample numbers go from 1 to 16")
    page.get_by_label("From sample no.").fill("3")
    page.get_by_role("button", name="Interpolate").click()
    expect(status).to_have_text("From samples 3 and 2, left to right.")
    expect(page.locator("#interpolate-error")).to_be_hidden()
    assert "between samples 3 and 2" in (strip.get_attribute("alt") or "")


def test_the_served_model_and_its_figures_are_shown(
    visit: Callable[..., Visit], live_url: str, served_manifest: Path
) -> None:
    manifest = json.loads(served_manifest.read_text())
    figures = manifest["evaluation"]
    page = open_page(visit(), live_url)
    expect(page.locator("#model-version")).to_have_text(str(SERVED_VERSION))
    expect(page.locator("#model-source")).to_have_text("model repository")
    expect(page.locator("#model-latent")).to_have_text(str(manifest["latent_dim"]))
    expect(page.locator("#model-preset")).to_have_text(manifest["training"]["preset"])
    expect(page.locator("#model-elbo")).to_have_text(f"{figures['neg_elbo']:.1f} nats")
    expect(page.locator("#model-iwae")).to_have_text(
        f"{figures['iwae_nll']:.1f} nats (k = {figures['iwae_k']})"
    )
    components = manifest["density"]["components"]
    expect(page.locator("#model-prior")).to_have_text(f"a fitted density ({components} Gaussians)")
    expect(page.locator("#model-status")).to_contain_text(f"Serving version {SERVED_VERSION}")
    expect(page.locator("#model-error")).to_be_hidden()


def test_without_a_model_the_page_shows_the_errors(
    visit: Callable[..., Visit], empty_url: str
) -> None:
    visitor = visit()
    page = open_page(visitor, empty_url)
    expect(page.locator("#model-version")).to_have_text("none")
    expect(page.locator("#model-error")).to_be_visible()
    expect(page.locator("#model-error")).to_contain_text("No model is ready: no valid model")

    draw(page, BAR, DIAGONAL)
    error = page.locator("#draw-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("503 No model to serve: no valid model")
    page.get_by_role("button", name="Sample", exact=True).click()
    expect(page.locator("#sample-error")).to_contain_text("503 No model to serve")
    expect(page.locator("#samples")).to_be_hidden()
    page.get_by_role("button", name="Use as A").click()
    page.get_by_role("button", name="Use as B").click()
    expect(error).to_be_visible()  # still: using the drawing does not make the 503 go away
    page.get_by_role("button", name="Interpolate").click()
    expect(page.locator("#interpolate-error")).to_contain_text("503 No model to serve")
    visitor.screenshot("no-model")


def test_at_phone_width_everything_fits_and_is_keyboard_reachable(
    visit: Callable[..., Visit], live_url: str
) -> None:
    visitor = visit(viewport=PHONE)
    page = open_page(visitor, live_url)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    reached = []
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.name"))
        if reached[-1] == "model-refresh":
            break
    controls = ["clear", "example", "use-a", "use-b", "n", "seed", "temperature", "sample"]
    controls += ["new-seed", "ends", "from", "to", "steps", "method", "interpolate"]
    assert set(controls) <= set(reached), reached
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # focus is visible

    # Without a pointer: an example digit, a grid, and a path between two samples.
    page.locator("#example").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#draw-status")).to_have_text(
        f"Reconstructed by model version {SERVED_VERSION}."
    )
    page.locator("#sample").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#sample-status")).to_contain_text("16 digits")
    page.locator("input[name=ends][value=samples]").focus()
    page.keyboard.press("Space")
    page.locator("#interpolate").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#interpolate-status")).to_have_text("From samples 1 and 2, left to right.")
    for image_id in ("seen", "recon", "samples", "strip"):
        loaded(page, image_id)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    alts = page.locator("img").evaluate_all("(images) => images.map((i) => i.alt)")
    assert all(alt.strip() for alt in alts), alts
    visitor.screenshot("phone")


def test_screenshot_of_the_page_with_the_default_model(
    visit: Callable[..., Visit], default_url: str
) -> None:
    """test-artifacts/browser/web-page.png: the README's picture (docs/images/web-page.png)."""
    version = int(embedded_version_dir().name)
    done = f"Reconstructed by model version {version}."
    visitor = visit()
    page = open_page(visitor, default_url)
    expect(page.locator("#model-source")).to_have_text("embedded default model")
    draw(page, BAR, DIAGONAL)
    expect(page.locator("#draw-status")).to_have_text(done)
    page.get_by_role("button", name="Use as A").click()
    page.get_by_role("button", name="Clear").click()
    draw(page, TWO)
    expect(page.locator("#draw-status")).to_have_text(done)
    page.get_by_role("button", name="Use as B").click()
    page.get_by_role("button", name="Sample", exact=True).click()
    expect(page.locator("#sample-status")).to_contain_text("16 digits")
    page.get_by_role("button", name="Interpolate").click()
    expect(page.locator("#interpolate-status")).to_have_text(
        "From drawings A and B, left to right."
    )
    for image_id in ("seen", "recon", "samples", "strip", "end-a", "end-b"):
        loaded(page, image_id)
    assert visitor.screenshot("web-page").stat().st_size > 10_000
