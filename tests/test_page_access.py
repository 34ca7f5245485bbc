"""The page for people who read it with a screen reader, use it with a keyboard alone, or need text that stands out
from its background, in a real browser (Chromium, Playwright): axe-core's checks (WCAG 2 A and AA, and its best
practices) on every tab in the states a visitor sees, and an example picked and its answer heard without a mouse."""

import pytest
from conftest import clear_photos
from test_browser import HEATMAP_SHOWN, start_live_stream
from test_page import BRICK, browser  # noqa: F401  (the module's browser, with its fake camera)
from test_page_layout import DESKTOP, PHONE

import app as demo_app
from catsdogs.inference import NOT_A_PET

axe = pytest.importorskip("axe_playwright_python.sync_playwright", reason="axe-playwright-python is not installed: "
                          "pip install -r requirements-dev.txt")

# What axe finds in Gradio's own markup, which the page leaves as it is: (rule, the element it is in, what it is).
GRADIOS_OWN = [
    ("aria-prohibited-attr", ".empty", "an empty output's placeholder: a div with an aria-label and no role"),
    ("nested-interactive", ".toast-header", "an error message's header: a button that holds its close button"),
    ("nested-interactive", "#batch", "the photo list's add-more button, which holds the upload area"),
    ("image-redundant-alt", "footer", "the footer's Settings button: a logo whose alt text is its label"),
]
# True once nothing is on its way: Gradio dims an output while its answer comes (.pending), over a transition, and
# slides messages in (scripted animations). CSS animations go on (spinners, a message's timer bar).
SETTLED = "() => !document.querySelector('.pending') && document.getAnimations().every(a => a instanceof CSSAnimation)"
# The text colour of each element the selector names (of its ::after, where CSS writes the words) and the colour it
# is drawn on: the first ancestor's background that is not transparent.
DRAWN_ON = """([sel, pseudo]) => [...document.querySelectorAll(sel)].map(e => {
  let under = e; while (under && getComputedStyle(under).backgroundColor.endsWith(", 0)")) under = under.parentElement;
  return [getComputedStyle(e, pseudo).color, getComputedStyle(under || document.body).backgroundColor];
})"""


def contrast(colour: str, background: str) -> float:
    """WCAG's contrast ratio of two opaque CSS colours, `rgb(r, g, b)`."""
    def luminance(css: str) -> float:
        channels = [int(c) / 255 for c in css[css.index("(") + 1:-1].split(",")[:3]]
        r, g, b = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * r + 0.7152 * g + 0.0722 * b
    lighter, darker = sorted([luminance(colour), luminance(background)], reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


# For each (rule, element) axe reported: whether it is one of GRADIOS_OWN, found in one pass over the page right after
# axe's, so that an element on its way out (a message closing itself) is still there; "gone" where it is not.
INSIDE = """([found, own]) => found.map(([rule, target]) => {
  const e = document.querySelector(target);
  return e === null ? "gone" : own.some(([r, inside]) => r === rule && e.closest(inside) !== null);
})"""


def faults(page) -> list[str]:
    """What axe-core finds on the page as it is once settled, less GRADIOS_OWN: one line per element."""
    page.wait_for_function(SETTLED, timeout=30_000)
    reported = [(rule, node) for rule in axe.Axe().run(page).response["violations"] for node in rule["nodes"]]
    gradios = page.evaluate(INSIDE, [[[rule["id"], node["target"][0]] for rule, node in reported],
                                     [[own, inside] for own, inside, _ in GRADIOS_OWN]])
    return [f"{rule['id']} ({rule['impact']}): {rule['help']}: {node['html'][:150]}"
            + (" (gone before it could be placed)" if own == "gone" else "")
            for (rule, node), own in zip(reported, gradios, strict=True) if own is not True]


@pytest.mark.parametrize("size, scheme", [(PHONE, "dark"), (DESKTOP, "light")], ids=["phone-dark", "desktop-light"])
def test_every_tab_passes_axe_core_as_a_visitor_goes_through_it(browser, app, shared_data, tmp_path, size,  # noqa: F811
                                                                 scheme):
    page = browser.new_page(viewport=dict(zip(("width", "height"), size)), color_scheme=scheme)
    page.goto(app.url)
    page.locator("#examples img").first.wait_for()
    seen = {"the page": faults(page)}
    # The words CSS gives the photo's source buttons, which axe cannot see.
    seen["the source buttons' words"] = [f"{colour} on {background}" for colour, background in page.evaluate(
        DRAWN_ON, ["#photo .source-selection button", "::after"]) if contrast(colour, background) < 4.5]
    cat, dog = clear_photos(shared_data, "cat")[0], clear_photos(shared_data, "dog")[0]
    page.locator("#photo input[type=file]").set_input_files(cat)
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    seen["a cat and its heatmap"] = faults(page)
    page.get_by_text(demo_app.EXAMPLE_PICTURES[BRICK.name]).click()
    page.locator("#prediction [data-testid=label-output-value]").get_by_text(NOT_A_PET).wait_for(timeout=30_000)
    page.mouse.move(0, 0)  # off the example: its hover style is checked too, but once is enough
    seen["neither, muted"] = faults(page)
    text = tmp_path / "shopping-list.jpg"
    text.write_text("milk, eggs, cat food")
    page.locator("#photo input[type=file]").set_input_files(text)
    page.locator("[data-testid=toast-body]").first.wait_for(timeout=30_000)
    seen["a file that is no photo"] = faults(page)
    # Read, the message is closed (unless it closed itself): it would otherwise close during a later state's check.
    page.evaluate("() => document.querySelectorAll('[data-testid=toast-close]').forEach(button => button.click())")
    page.locator("[data-testid=toast-body]").first.wait_for(state="detached")
    start_live_stream(page)
    page.locator("#live-explain input").check()
    page.wait_for_function("() => document.querySelector('#live-heatmap img')?.naturalWidth > 0", timeout=30_000)
    seen["the live stream and its heatmap"] = faults(page)
    page.get_by_role("tab", name="Several photos").click()
    page.locator("#batch input[type=file]").set_input_files([cat, dog, BRICK])
    page.locator("#batch-run").click()
    page.locator("#gallery .caption-label").nth(2).wait_for(timeout=60_000)
    page.locator("#batch-timing[aria-live=polite]").get_by_text("3 photos answered").wait_for()  # read out
    seen["several photos answered"] = faults(page)
    page.close()
    assert not any(seen.values()), {state: found for state, found in seen.items() if found}


def test_a_keyboard_alone_picks_an_example_and_its_answer_is_read_out(browser, app):  # noqa: F811
    page = browser.new_page(viewport=dict(zip(("width", "height"), DESKTOP)))
    page.goto(app.url)
    page.locator("#examples img").first.wait_for()
    # A screen reader names each example by its caption (Gradio's own name is "Thumbnail 1 of 6").
    names = [f'button "{name}"' for name in demo_app.EXAMPLE_PICTURES.values()]
    page.get_by_role("button", name=demo_app.EXAMPLE_PICTURES[BRICK.name]).wait_for()  # once the page's script ran
    assert page.locator("#examples").aria_snapshot().splitlines()[-len(names):] == [f"- {n}" for n in names]
    focused = []
    while not focused or focused[-1] != "Chelsea the cat":
        assert len(focused) < 30, focused
        page.keyboard.press("Tab")
        focused.append(page.evaluate("() => document.activeElement.getAttribute('aria-label')"))
    assert "Upload file" in focused  # the photo box's own buttons come first
    page.keyboard.press("Enter")
    answer = page.locator("#prediction[aria-live=polite] [data-testid=label-output-value]")
    answer.get_by_text("cat").wait_for(timeout=30_000)
    assert page.locator("#unsure[aria-live=polite]").count() == 1  # "not sure" and "neither" are read out too
    page.close()
