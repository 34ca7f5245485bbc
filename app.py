"""The catsdogs demo: drop in a pet photo, or hold your pet up to the webcam, and see cat, dog, or neither (with
weights that carry a "not a pet" score, catsdogs.notpet), and where in the photo the network looked (a Grad-CAM
heatmap, catsdogs.explain).

    python app.py                                   # the shipped weights/, on http://127.0.0.1:7860
    python app.py --model you/catsdogs --revision main
    CATSDOGS_MODEL=you/catsdogs python app.py       # how a Hugging Face Space picks its model

Weights from the Hub go through the Hub's cache; if the Hub cannot be reached or the
repo is wrong, the page says so and serves the shipped weights/ instead.

What one request may cost is bounded (docs/limits.md): photos over preprocess.MAX_PIXELS are refused
before decoding however they arrive (upload, webcam, `data:` URL, link, live frame), a batch takes at most
MAX_BATCH_FILES photos, run Classifier.chunk at a time, and request bodies are capped. The page's inputs are
catsdogs.components (hardened against bad input); its words about answers and weights, catsdogs.page_text.
"""

import argparse
import csv
import io
import ipaddress
import os
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

PREDICT_SLOTS = 2  # photo events running at once (the queue's concurrency limit for them)

if __name__ == "__main__":  # here, before Gradio loads: importing it starts threads, and glibc caps its heaps only
    # if told before a second thread allocates (a heap opened earlier stays)
    from catsdogs.inference import keep_freed_memory

    keep_freed_memory(heaps=PREDICT_SLOTS)  # this process serves one model: keep its activations' memory

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
# Behind an HTTP(S) proxy, launch() must still reach its own server on loopback.
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from gradio.components.label import LabelConfidence, LabelData  # noqa: E402
from gradio.processing_utils import save_bytes_to_cache  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from huggingface_hub import constants  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from catsdogs.components import (NOT_A_PHOTO, AnswerLabel, Demo, PetPhoto, PetPhotos, UnreadablePhoto,  # noqa: E402
                                 decoded_once, photo_errors, shown_copy, too_large, unshowable)
from catsdogs.explain import Explainer  # noqa: E402
from catsdogs.hub import SHIPPED_WEIGHTS, HubError, is_local_folder  # noqa: E402
from catsdogs.inference import NOT_A_PET, Answer, Classifier  # noqa: E402
from catsdogs.page_text import (answer_caption, answer_note, examples_answered, how_it_works, info_caption,  # noqa: E402
                                 short_card)
from catsdogs.predict import table_headers, table_row  # noqa: E402
from catsdogs.preprocess import ImageTooLarge  # noqa: E402
from catsdogs.serving import LinkFetcher, RequestSizeLimit  # noqa: E402

# Limits per request (docs/limits.md): each bounds the memory or the time one request can take.
MAX_FILE_BYTES = 20 * 2**20  # one photo file, uploaded or linked
MAX_BATCH_FILES = 100  # photos per "Several photos" batch: ~5-10 s of the 2 CPU cores, one queue slot
MAX_REQUEST_BYTES = 8 * 2**20  # any other request body (JSON, parsed in memory): a phone photo as a data: URL fits
MAX_UPLOAD_BYTES = MAX_BATCH_FILES * MAX_FILE_BYTES + 2**20  # one upload request (streamed to disk, not memory)
LINK_SECONDS = 20  # the links of one request must have downloaded by then, however slowly their servers send
# Links download inside a prediction slot: at most PREDICT_SLOTS - 1 at once, one per visitor, so slow links
# always leave a slot for uploads.
LINKS_AT_ONCE = max(1, PREDICT_SLOTS - 1)
CACHE_SECONDS = 600  # uploads and linked photos are deleted from Gradio's cache after 10 minutes
# Visitors whose session state (the photo tab's answer, Gradio's copy of the page's config: ~65 KB) is kept: the
# newest ones; Gradio's default of 10,000 lets a stream of new visitors grow the server by ~1 GB before any goes.
SESSIONS_KEPT = 1000

# The clickable examples: pictures whose licence lets them ship here (docs/demo.md lists each
# one's source and licence): a cat, a dog, and non-pets that show the other answers.
EXAMPLES = Path(__file__).resolve().parent / "examples"
EXAMPLE_PICTURES = {"chelsea.jpg": "Chelsea the cat", "retriever.jpg": "A golden retriever",
                    "coffee.jpg": "A cup of coffee", "gravel.jpg": "Gravel", "grass.jpg": "Grass",
                    "brick.jpg": "A brick wall"}
# The webcam's frames go to the network as the camera sees them (text in the photo reads the right way, in the
# answer's heatmap too): Gradio's `mirror` flips the captured frame as well as the preview, so it is off and
# WEBCAM_CSS mirrors the preview alone, as a mirror would. 640 px wide is enough for a 224x224 network.
WEBCAM = gr.WebcamOptions(mirror=False, constraints={"video": {"width": {"ideal": 640}}})
# The live view asks for small frames: they are squashed to 224x224 anyway, and a 320x240 frame costs the browser,
# the upload and the decoder a quarter of a 640x480 one.
LIVE_WEBCAM = gr.WebcamOptions(mirror=False, constraints={"video": {"width": {"ideal": 320}}})
LIVE_EVERY = 0.1  # s: the browser sends a frame this often; the app answers the newest one (Gradio replaces a
# frame that waits with the next), so a slow answer drops frames rather than falling behind the camera
HEATMAP_ALT = "The photo, coloured where it pushed the network towards its answer"  # what a screen reader says
HEATMAP_CAPTION = ("Red and yellow: the parts of the photo that pushed the network towards its answer (Grad-CAM); "
                   "blue ones a little, uncoloured ones not at all.")
WEBCAM_CSS = "#photo [data-testid=webcam-video], #live [data-testid=webcam-video] { transform: scaleX(-1); }"
IMAGE_HEIGHT = 360  # px: the photo and heatmap boxes keep this height whatever the photo's shape
PHONE_WIDTH = 640  # px: narrower windows get the phone layout (smaller boxes, the answer scrolled into view)
PHONE_IMAGE_HEIGHT = 240  # px: the boxes' height there, so that an answer, its heatmap and its note fit a screen
# System fonts only: a Google font would be fetched by every visitor's browser, and not at all offline. Text the Soft
# theme draws too faint to read (WCAG AA asks 4.5:1) is darker: the accent, block labels and grey captions in light
# mode, block labels and links in dark mode, the primary button's text (tests/test_page_access.py).
THEME = gr.themes.Soft(primary_hue="amber", secondary_hue="indigo", neutral_hue="slate",
                       font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]).set(
    color_accent="*primary_700", body_text_color_subdued="*neutral_600",
    block_label_text_color="*primary_800", block_label_background_fill_dark="*primary_800",
    link_text_color_dark="*secondary_300", link_text_color_visited_dark="*secondary_300",
    link_text_color_active_dark="*secondary_300", link_text_color_hover_dark="*secondary_200",
    button_primary_text_color="*neutral_950", button_primary_text_color_dark="*neutral_950")
CSS = """
.dark { --color-accent: var(--primary-500); }  /* the theme has one accent for both modes: amber-700 is too dark here */
.caption, .caption p { color: var(--body-text-color-subdued); font-size: var(--text-sm); }
/* The photo's source buttons say what they do (Gradio draws bare icons): */
#photo .source-selection { gap: 0.5rem; }
#photo .source-selection button { width: auto; height: 1.9rem; display: flex; align-items: center; gap: 0.3rem;
                                  padding: 0 0.6rem; border: 1px solid var(--border-color-primary);
                                  border-radius: var(--radius-md); color: var(--body-text-color-subdued); }
#photo .source-selection button:is(.selected, :hover, :focus) { color: var(--color-accent); }
#photo .source-selection button svg { width: 1.1rem; height: 1.1rem; }
#photo .source-selection button::after { font-size: var(--text-sm); }
#photo .source-selection button[aria-label="Upload file"]::after { content: "Upload"; }
#photo .source-selection button[aria-label="Capture from camera"]::after { content: "Webcam"; }
#photo .source-selection button[aria-label="Paste from clipboard"]::after { content: "Paste"; }
/* A live frame's heatmap is as small as the frame: drawn as large as its box, like the photo's. */
#live-heatmap img { width: 100%; height: 100%; object-fit: contain; }
/* Page margins from 16 px on a 320-px screen (WCAG's narrowest, where all three tabs' names then fit) to Gradio's 32
   from 640 px: a rule of its own, as Gradio scopes rules inside @media to its content, which the margins are not. */
.gradio-container .main.app { padding-left: clamp(var(--size-4), 5vw, var(--size-8));
                              padding-right: clamp(var(--size-4), 5vw, var(--size-8)); }
/* Not a cat or a dog: the two probabilities stay, muted (their bars faint, their figures grey yet readable). */
.not-a-pet .confidence-set { color: var(--body-text-color-subdued); }
.not-a-pet .confidence-set .bar { opacity: 0.45; }
/* Galleries as tall as their pictures (Gradio's "auto" height still scrolls inside a box), in as many columns as
   fit the width, captions whole under their pictures. */
.fits .grid-wrap { max-height: none; min-height: 0; overflow-y: visible; }
.fits .grid-container { padding-top: var(--size-10); grid-template-rows: none; grid-auto-rows: auto;
                        grid-template-columns: repeat(auto-fill, minmax(var(--thumb-width, 150px), 1fr)); }
/* The examples in one row, in two on phones. */
#examples .grid-container { grid-template-columns: repeat(EXAMPLES_A_ROW, 1fr); }
.fits .thumbnail-item { display: flex; flex-direction: column; height: auto; aspect-ratio: auto; }
.fits .thumbnail-item > img { aspect-ratio: 1; height: auto; }
/* Gradio fades a hovered example's caption; :not(#_) outranks its rule. */
.fits .thumbnail-item:hover .caption-label:not(#_) { opacity: 1; }
.fits .caption-label { position: static; max-width: none; white-space: normal; text-overflow: clip;
                       border: none; background: none; padding: var(--size-1) var(--size-1) 0; }
@media (max-width: PHONE_WIDTHpx) {
  .tab-container button { padding: 0 var(--size-2); }  /* all three tabs' names fit, none in a "•••" menu */
  /* The table's five columns in the width: smaller type and padding, file names broken anywhere. */
  #batch-results .cell-wrap { padding: var(--size-1); font-size: var(--text-sm); overflow-wrap: anywhere; }
  #photo, #heatmap, #live, #live-heatmap { height: PHONE_IMAGE_HEIGHTpx !important; }  /* Gradio: IMAGE_HEIGHT inline */
  #examples .grid-container { grid-template-columns: repeat(EXAMPLES_A_PHONE_ROW, 1fr); }
}
""".replace("PHONE_WIDTHpx", f"{PHONE_WIDTH - 1}px").replace(
    "PHONE_IMAGE_HEIGHTpx", f"{PHONE_IMAGE_HEIGHT}px").replace(
    "EXAMPLES_A_ROW", str(len(EXAMPLE_PICTURES))).replace("EXAMPLES_A_PHONE_ROW", str(-(-len(EXAMPLE_PICTURES) // 2)))

# Gradio's Label rounds its percentages to whole ones ("dog 98%" for a photo at 97.6%, "not sure" below 98%): on
# every page load, a watcher writes each Label's percentages from its bars' values, with one decimal like the rest.
ONE_DECIMAL_LABELS = """() => {
  const shown = (meter) => `${(Number(meter.value) * 100).toFixed(1)}%`;
  const rewrite = () => document.querySelectorAll(".confidence-set").forEach((set) => {
    const meter = set.querySelector("meter"), figure = set.querySelector("dd.confidence");
    if (meter && figure && figure.textContent !== shown(meter)) figure.textContent = shown(meter);
  });
  new MutationObserver(rewrite).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                       attributes: true, attributeFilter: ["value"]});
}"""


# Gradio's photo box takes only files whose type the browser reports as image/*, and Chromium on Linux reports
# none for an iPhone's IMG_0001.HEIC (a name in capitals): such a file gets its type from its name, in the page,
# before Gradio's own handlers see it (picked with the file chooser, or dropped).
TYPED_PHONE_PHOTOS = """() => {
  const typeOf = (file) => !file.type && /\\.(heic|heif)$/i.test(file.name) ?
    `image/${file.name.split(".").pop().toLowerCase()}` : "";
  const typed = (files) => {
    if (!files || ![...files].some(typeOf)) return null;
    const list = new DataTransfer();
    for (const file of files) list.items.add(typeOf(file) ?
      new File([file], file.name, {type: typeOf(file), lastModified: file.lastModified}) : file);
    return list;
  };
  document.addEventListener("change", (event) => {
    const list = event.target instanceof HTMLInputElement && typed(event.target.files);
    if (list) event.target.files = list.files;
  }, true);
  document.addEventListener("drop", (event) => {
    const list = typed(event.dataTransfer?.files);
    if (!list) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    event.target.dispatchEvent(new DragEvent("drop", {bubbles: true, cancelable: true, dataTransfer: list}));
  }, true);
}"""
# For screen readers: Gradio names every gallery picture "Thumbnail 1 of 6" and gives it its caption as alt text as
# well, so each is named by its caption instead (its picture then decorative); and the photo tab's answer and note,
# and the line that says several photos are answered, are read out when they change (polite live regions; the live
# tab's answers, ten a second, are not).
SCREEN_READERS = """() => {
  const name = () => {
    document.querySelectorAll(".thumbnail-item").forEach((item) => {
      const caption = item.querySelector(".caption-label")?.textContent.trim(), picture = item.querySelector("img");
      if (!caption) return;
      if (item.getAttribute("aria-label") !== caption) item.setAttribute("aria-label", caption);
      if (picture?.alt) picture.alt = "";
    });
    for (const id of ["prediction", "unsure", "batch-timing"]) {
      document.getElementById(id)?.setAttribute("aria-live", "polite");
    }
  };
  new MutationObserver(name).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                     attributes: true, attributeFilter: ["aria-label", "alt"]});
  name();
}"""
PAGE_SCRIPTS = f"() => {{ ({ONE_DECIMAL_LABELS})(); ({TYPED_PHONE_PHOTOS})(); ({SCREEN_READERS})(); }}"


def load_classifier(model: str, revision: str | None) -> tuple[Classifier | None, str]:
    """The classifier to serve, and a warning for the page when it is not the one asked for."""
    try:
        return Classifier(model, revision), ""
    except HubError as error:
        if model == str(SHIPPED_WEIGHTS) and revision is None:
            message = f"No model could be loaded: {error}"
            print(f"error: {message}", flush=True)
            return None, message
        fallback, fallback_problem = load_classifier(str(SHIPPED_WEIGHTS), None)
        message = f"Could not load `{model}`{'@' + revision if revision else ''}: {error}. " + (
            fallback_problem or "Serving the shipped weights/ instead.")
        print(f"warning: {message}", flush=True)
        return fallback, message


def label_value(answer: Answer) -> LabelData:
    """What the Labels and /predict show: the answer as the headline, each class's probability under it."""
    ranked = sorted(answer.probabilities.items(), key=lambda item: item[1], reverse=True)
    return LabelData(label=answer.verdict, confidences=[LabelConfidence(label=c, confidence=p) for c, p in ranked])


def shown_label(answer: Answer) -> dict:
    """The page's Label for an answer: not a cat or a dog mutes the probabilities (CSS)."""
    return gr.update(value=label_value(answer), elem_classes=["not-a-pet"] if answer.not_a_pet else [])


def took(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# Taking up a photo is a check and a change of a PhotoBox that two events of one visitor can make at once.
TAKING_A_PHOTO = threading.Lock()
REFUSAL_SECONDS = 10  # how long a gr.Error's message stays on the page (its default duration)


@dataclass
class PhotoBox:
    """Which file of a visitor's photo box the photo tab answers. It lives in a gr.State, which hands every event of
    that visitor the same object, so an event that took up a photo can tell when a newer one has replaced it."""

    photo: str | None = None  # the file in Gradio's cache; None for an empty box
    shown: str | None = None  # the JPEG copy the box shows of that photo, where browsers cannot show it (HEIC)
    refused: str | None = None  # the last file refused, while the message that says why is on the page
    refused_until: float = 0.0  # time.monotonic() when that message goes

    @staticmethod
    def file_of(photo: "str | UnreadablePhoto | None") -> str | None:
        return photo.path if isinstance(photo, UnreadablePhoto) else photo

    def take(self, photo: "str | UnreadablePhoto | None") -> bool:
        """Take up the box's photo; False when it is the one already taken up, the copy shown of it, or a file
        refused while the message is still on the page. Gradio's frontend sends two change events, both with the
        new file, for a file dropped over another one, and one when the copy replaces the photo in the box: none
        of them must answer (or refuse) it again, even when the box has been emptied after a refusal in between."""
        file = self.file_of(photo)
        with TAKING_A_PHOTO:
            if file == self.photo or (file is not None and file in (self.shown, self._still_refused())):
                return False
            self.photo, self.shown = file, None
            return True

    def refuse(self, photo: "str | UnreadablePhoto") -> None:
        """Note that the box's photo got an error message instead of an answer."""
        with TAKING_A_PHOTO:
            if self.holds(photo):
                self.refused, self.refused_until = self.photo, time.monotonic() + REFUSAL_SECONDS

    def _still_refused(self) -> str | None:
        return self.refused if time.monotonic() < self.refused_until else None

    def show(self, photo: str, copy: str) -> str:
        """The copy the box is to show in place of the photo, which `take` then knows."""
        with TAKING_A_PHOTO:
            if self.holds(photo):
                self.shown = copy
        return copy

    def holds(self, photo: "str | UnreadablePhoto | None") -> bool:
        """Whether the photo is still the one in the box (no newer photo has been taken up since)."""
        return self.file_of(photo) == self.photo


@dataclass
class BatchAnswer:
    """One photo of a batch: its answer, or why it has none."""

    photo: str
    answer: Answer | None
    problem: str = ""
    shown: str = ""  # the file the page shows: the photo, or a copy browsers can show

    def row(self, class_names: list[str]) -> list:
        return table_row(os.path.basename(self.photo), self.answer, class_names, self.problem)


class Predictor:
    """The model side of every event, for the page and the API: answers, or a gr.Error a person understands."""

    def __init__(self, classifier: Classifier | None, startup_warning: str) -> None:
        self.classifier = classifier
        self.explainer = Explainer(classifier.model) if classifier else None
        self.startup_warning = startup_warning
        self.class_names = classifier.class_names if classifier else ["cat", "dog"]

    def _require_model(self) -> None:
        if self.classifier is None:
            raise gr.Error(self.startup_warning or "No model is loaded.")

    def _usable(self, photo: "str | io.BytesIO | UnreadablePhoto | None") -> None:
        self._require_model()
        if photo is None:
            raise gr.Error("No photo given: upload one, paste one, or take a webcam snapshot.")
        if isinstance(photo, UnreadablePhoto):
            raise gr.Error(photo.reason)

    def classify(self, photo: "str | io.BytesIO | UnreadablePhoto | None") -> Answer:
        self._usable(photo)
        with photo_errors():
            return self.classifier.predict([photo])[0]

    def label(self, photo: "str | io.BytesIO | UnreadablePhoto | None") -> LabelData:
        """The API's /predict: the answer as the Label shows it."""
        return label_value(self.classify(photo))

    def where_it_looked(self, photo: "str | io.BytesIO | UnreadablePhoto | None",
                        class_name: str | None = None) -> Image.Image:
        """The photo with the heatmap of `class_name` (by default the class the model answers) over it."""
        if class_name is None:
            class_name = self.classify(photo).top_class
            if isinstance(photo, io.BytesIO):  # a data: URL's bytes, read once already
                photo.seek(0)
        self._usable(photo)
        with photo_errors():
            return self.explainer.overlay(photo, class_name)

    def classify_many(self, files: list[str] | None, shown: bool = False) -> list[BatchAnswer]:
        """Each file's answer, in order; with `shown`, each also names the file the page shows of it."""
        self._require_model()
        if not files:
            raise gr.Error("No photos given: choose one or more image files.")
        if len(files) > MAX_BATCH_FILES:
            raise gr.Error(f"Too many photos: {len(files)} at once, and a batch takes at most {MAX_BATCH_FILES}. "
                           f"Classify them in batches of {MAX_BATCH_FILES}.")
        shown_files: list[str] = []
        results = self.classifier.predict_readable(decoded_once(files, shown_files) if shown else files)
        answers = []
        for path, result, shown_file in zip(files, results, shown_files if shown else files, strict=True):
            if isinstance(result, Exception):
                answers.append(BatchAnswer(path, None, too_large(result) if isinstance(result, ImageTooLarge)
                                           else NOT_A_PHOTO))
            else:
                answers.append(BatchAnswer(path, result, shown=shown_file))
        return answers

    def rows(self, files: list[str] | None) -> list[list]:
        """The API's /predict_many: one table row per photo, in order; unreadable ones get a note."""
        return [answer.row(self.class_names) for answer in self.classify_many(files)]


def write_csv(headers: list[str], rows: list[list]) -> str:
    """The batch table as a CSV file to download, written into Gradio's cache: Gradio serves it from there and
    deletes it with the uploads (delete_cache)."""
    table = io.StringIO(newline="")
    csv.writer(table).writerows([headers, *rows])
    return save_bytes_to_cache(table.getvalue().encode(), "catsdogs-answers.csv", get_upload_folder())


# The page's events: each takes what its tab shows and returns what it changes.

def show_answer(predictor: Predictor, photo, box: PhotoBox):
    """Photo tab: the label at once (and a copy of the photo the browser can show, where it cannot show the photo),
    then the heatmap of that same photo; no photo clears everything. Only while the photo is still the one in the
    box: a photo dropped meanwhile gets its own answer, never this one's."""
    unchanged = (gr.skip(),) * 5
    if not box.take(photo):
        yield unchanged
        return
    if photo is None:
        yield gr.skip(), None, "", None, ""
        return
    started = time.perf_counter()
    try:
        decoded = unshowable(photo) if isinstance(photo, str) else None  # answered, shown and explained: one decode
        answer = predictor.classify(photo if decoded is None else decoded)
    except gr.Error:
        box.refuse(photo)
        raise
    answered = f"Answered in {took(time.perf_counter() - started)}"
    shown = gr.skip() if decoded is None else box.show(photo, shown_copy(decoded, photo))
    yield (shown, shown_label(answer), answer_note(answer), None, answered) if box.holds(photo) else unchanged
    started = time.perf_counter()
    heatmap = predictor.where_it_looked(photo if decoded is None else decoded, answer.top_class)
    heatmap_line = f"{answered} · heatmap in {took(time.perf_counter() - started)}"
    yield (gr.skip(), gr.skip(), gr.skip(), heatmap, heatmap_line) if box.holds(photo) else unchanged


def show_live(predictor: Predictor, frame, explain: bool) -> tuple:
    """Live tab: the newest frame's answer and, when asked for, where the network looked in it."""
    started = time.perf_counter()
    answer = predictor.classify(frame)
    answered = f"Last frame answered in {took(time.perf_counter() - started)}"
    if not explain:
        return shown_label(answer), answer_note(answer), gr.skip(), answered
    started = time.perf_counter()
    heatmap = predictor.where_it_looked(frame, answer.top_class)
    return (shown_label(answer), answer_note(answer), heatmap,
            f"{answered} · heatmap in {took(time.perf_counter() - started)}")


def show_batch(predictor: Predictor, headers: list[str], files) -> tuple:
    started = time.perf_counter()
    answers = predictor.classify_many(files, shown=True)
    seconds = time.perf_counter() - started
    rows = [answer.row(predictor.class_names) for answer in answers]
    gallery = [(answer.shown, answer_caption(answer.answer))
               for answer in answers if answer.answer is not None]
    table = pd.DataFrame(rows, columns=headers).style.format(precision=1, na_rep="-")  # 28.0, not 28
    return (gallery, table, write_csv(headers, rows),
            f"{len(answers)} photo{'s' if len(answers) != 1 else ''} answered in {took(seconds)}")


def model_card(classifier: Classifier | None) -> None:
    """The card in short, and the whole card: its Hub page for weights from the Hub, else its file to download
    (the card of local weights is a file beside them; its plots are files the page does not serve)."""
    if classifier is None:
        return
    repo, _, revision = classifier.source.partition("@")
    hub_page = None if is_local_folder(repo) else f"{constants.ENDPOINT}/{repo}" + (
        f"/tree/{revision}" if revision else "")
    gr.Markdown(short_card(classifier, hub_page and f"[The full model card on the Hugging Face Hub]({hub_page})"),
                elem_id="model-card")
    card = classifier.folder / "README.md"
    if hub_page is None and card.is_file():
        with gr.Row():
            gr.DownloadButton("The full model card (Markdown)", card, size="sm", variant="secondary", scale=0,
                              elem_id="full-card")


def header(startup_warning: str) -> None:
    gr.Markdown("# 🐱 Cat or dog?\nGive it a photo of a pet, or click one of the examples: a small network "
                "says cat, dog or neither, how sure it is, and shows where in the photo it looked.", elem_id="intro")
    if startup_warning:
        gr.Markdown(f"⚠️ {startup_warning}", elem_id="startup-warning")


def pick_example(selected: gr.SelectData) -> tuple:
    return EXAMPLES / list(EXAMPLE_PICTURES)[selected.index], gr.Gallery(selected_index=None)


def scroll_to(elem_id: str, phones_only: bool = False) -> str:
    """JavaScript for an event: scroll the element to the top of the window once there is an answer (the
    event's first input, when it has one), with `phones_only` on a phone-sized window only."""
    narrow = f"window.innerWidth < {PHONE_WIDTH}" if phones_only else "true"
    return (f"(answer = true) => {{ if (answer && {narrow}) "
            f"document.getElementById('{elem_id}')?.scrollIntoView({{block: 'start'}}); }}")


def photo_tab(predictor: Predictor) -> tuple[PetPhoto, AnswerLabel, gr.Image]:
    with gr.Tab("Photo"):
        with gr.Row(equal_height=False):
            with gr.Column():
                photo = PetPhoto(type="filepath", sources=["upload", "webcam", "clipboard"], image_mode=None,
                                 label="Your photo", height=IMAGE_HEIGHT, elem_id="photo", webcam_options=WEBCAM)
                gr.Markdown("Drop a photo on the box, or use the buttons under it.", elem_classes="caption")
                examples = gr.Gallery([(EXAMPLES / name, label) for name, label in EXAMPLE_PICTURES.items()],
                                      label="No photo at hand? Click one", height="auto", allow_preview=False,
                                      interactive=False, buttons=[], object_fit="cover", elem_id="examples",
                                      elem_classes="fits")
            with gr.Column():
                label = AnswerLabel(num_top_classes=len(predictor.class_names), label="Prediction",
                                    elem_id="prediction")
                note = gr.Markdown(elem_id="unsure")
                heatmap = gr.Image(label="Where it looked", interactive=False, height=IMAGE_HEIGHT, format="jpeg",
                                   elem_id="heatmap", buttons=["download", "fullscreen"], alt_text=HEATMAP_ALT)
                gr.Markdown(HEATMAP_CAPTION, elem_classes="caption")
                timing = gr.Markdown(elem_id="photo-timing", elem_classes="caption")
    # An example goes into the photo box like an upload; no thumbnail stays marked once it is there.
    examples.select(pick_example, None, [photo, examples], api_visibility="private", queue=False)
    # On a phone the answer is under the photo: brought up, with the heatmap under it, once it is there.
    label.change(None, label, None, js=scroll_to("prediction", phones_only=True))
    box = gr.State(PhotoBox())  # each visitor gets its own copy
    # "multiple": a photo dropped while the last one is answered starts at once (the last one's answer then stops
    # showing), rather than after it.
    answered = photo.change(partial(show_answer, predictor), [photo, box], [photo, label, note, heatmap, timing],
                            api_name="photo_answer", api_visibility="private", concurrency_id="predict",
                            trigger_mode="multiple")
    # A photo that cannot be used: the error toast, and nothing of it (no broken image) or of the photo before.
    answered.failure(lambda: (None, None, "", None, ""), None, [photo, label, note, heatmap, timing],
                     api_visibility="private", queue=False)
    return photo, label, heatmap


def live_tab(predictor: Predictor) -> None:
    with gr.Tab("Live webcam"):
        with gr.Row():
            live = PetPhoto(sources=["webcam"], streaming=True, type="filepath", label="Webcam (live)",
                            elem_id="live", image_mode=None, height=IMAGE_HEIGHT, webcam_options=LIVE_WEBCAM)
            with gr.Column():
                live_label = AnswerLabel(num_top_classes=len(predictor.class_names), elem_id="live-prediction",
                                         label="Live prediction")
                live_note = gr.Markdown(elem_id="live-unsure")
                gr.Markdown(f"Answers the newest frame as soon as the last one is answered, up to {1 / LIVE_EVERY:.0f} "
                            "times a second, while the webcam records, for up to a minute. With several cameras, "
                            "the button beside Record picks one.", elem_classes="caption")
                explain = gr.Checkbox(False, label="Show where it looked (each frame then takes longer)",
                                      elem_id="live-explain")
                with gr.Column(visible=False) as explained:
                    live_heatmap = gr.Image(label="Where it looked", interactive=False, height=IMAGE_HEIGHT,
                                            format="jpeg", elem_id="live-heatmap", buttons=[], alt_text=HEATMAP_ALT)
                    gr.Markdown(HEATMAP_CAPTION, elem_classes="caption")
                timing = gr.Markdown(elem_id="live-timing", elem_classes="caption")
    # Unticked: the heatmap goes, so that it never shows beside answers of later frames.
    explain.change(lambda on: (gr.Column(visible=on), None), explain, [explained, live_heatmap],
                   api_visibility="private", queue=False)
    # No progress shown: it would fade the note and the timing line out and in with every frame.
    live.stream(partial(show_live, predictor), [live, explain], [live_label, live_note, live_heatmap, timing],
                stream_every=LIVE_EVERY, time_limit=60, concurrency_limit=4, show_progress="hidden",
                api_visibility="private")


def batch_tab(predictor: Predictor) -> tuple[gr.File, gr.Dataframe]:
    headers = table_headers(predictor.class_names)
    with gr.Tab("Several photos"):
        # The suffixes: the file chooser lists HEIC files where the system gives them no image type.
        files = PetPhotos(file_count="multiple", file_types=["image", ".heic", ".heif"], elem_id="batch",
                          label=f"Photos (up to {MAX_BATCH_FILES})")
        run = gr.Button("Classify all", variant="primary", elem_id="batch-run")
        timing = gr.Markdown(elem_id="batch-timing", elem_classes="caption")
        gallery = gr.Gallery(label="Answers", height="auto", object_fit="contain", elem_id="gallery",
                             elem_classes="fits")
        table = gr.Dataframe(headers=headers, label="Answers as a table", elem_id="batch-results", interactive=False,
                             wrap=True, column_widths=["28%", "26%", *["14%"] * len(predictor.class_names), "18%"])
        download = gr.File(label="The table as CSV", elem_id="batch-csv")
    answered = run.click(partial(show_batch, predictor, headers), files, [gallery, table, download, timing],
                         api_visibility="private", concurrency_id="predict")
    answered.success(None, None, None, js=scroll_to("batch-timing"))  # the answers are below the photos' list
    return files, table


def api_endpoints(predictor: Predictor, photo: PetPhoto, label: AnswerLabel, heatmap: gr.Image, files: gr.File,
                  table: gr.Dataframe) -> None:
    """The API (docs/api.md): the page's inputs and outputs, answered by invisible buttons' events."""
    endpoint = partial(gr.Button(visible=False).click, concurrency_id="predict")
    endpoint(predictor.label, photo, label, api_name="predict", api_description=(
        f"Cat, dog, or neither? One photo in; out, the answer as `label` (a class, or \"{NOT_A_PET}\" for a photo "
        "unlike every training photo, with weights that carry a not-a-pet score) and each class's probability "
        "as `confidences`, the most likely first."))
    endpoint(predictor.where_it_looked, photo, heatmap, api_name="heatmap", api_description=(
        "Where it looked: one photo in; the photo with a Grad-CAM heatmap of the class the model answers."))
    endpoint(predictor.rows, files, table, api_name="predict_many", api_description=(
        f"Several photos (up to {MAX_BATCH_FILES}) in; a table out, one row per photo in order: its name, the "
        f"answer (a class, or \"{NOT_A_PET}\"), each class's probability in percent and a note (not sure, or why "
        "the file could not be read)."))


def build_demo(classifier: Classifier | None, startup_warning: str = "",
               link_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
               link_seconds: float = LINK_SECONDS) -> gr.Blocks:
    predictor = Predictor(classifier, startup_warning)
    links = LinkFetcher(MAX_FILE_BYTES, link_seconds, at_once=LINKS_AT_ONCE, per_client=1,
                        also_allowed=link_networks)
    # Uploads and linked photos live in Gradio's cache: every CACHE_SECONDS, files older than that are deleted.
    with Demo(links, title="Cat or dog?", delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as demo:
        header(startup_warning)
        photo, label, heatmap = photo_tab(predictor)
        live_tab(predictor)
        files, table = batch_tab(predictor)
        examples = examples_answered(classifier, [EXAMPLES / name for name in EXAMPLE_PICTURES])
        with gr.Accordion("How it works, and its limits", open=True, elem_id="how-it-works"):
            gr.Markdown(how_it_works(classifier, examples))
        model_card(classifier)
        gr.Markdown(info_caption(classifier), elem_id="info", elem_classes="caption")
        api_endpoints(predictor, photo, label, heatmap, files, table)
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("CATSDOGS_MODEL") or str(SHIPPED_WEIGHTS),
                        help="weights folder or Hub repo id (default: $CATSDOGS_MODEL, else the shipped weights/)")
    parser.add_argument("--revision", default=os.environ.get("CATSDOGS_REVISION") or None,
                        help="branch, tag or commit of a Hub repo (default: $CATSDOGS_REVISION, else main)")
    # On Spaces, GRADIO_SERVER_NAME/PORT say where to listen; flags override them only when given.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on; 0.0.0.0 for every interface (default: $GRADIO_SERVER_NAME, "
                        "else %(default)s)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port to listen on (default: $GRADIO_SERVER_PORT, else %(default)s)")
    parser.add_argument("--allow-links-from", type=ipaddress.ip_network, action="append", default=[],
                        metavar="NETWORK", help="also fetch linked photos from this network, e.g. 10.0.0.0/8 for "
                        "an intranet (repeatable; by default only from public addresses)")
    parser.add_argument("--link-seconds", type=float, default=LINK_SECONDS, metavar="SECONDS",
                        help="how long the linked photos of one request may take to download, in all "
                        "(default: %(default)s)")
    args = parser.parse_args()
    if args.link_seconds <= 0:
        parser.error(f"--link-seconds must be more than 0, not {args.link_seconds:g}")

    classifier, warning = load_classifier(args.model, args.revision)
    if classifier is not None:
        print(f"serving {classifier.source} on {classifier.device.type}; {classifier.describe()}", flush=True)
    demo = build_demo(classifier, warning, tuple(args.allow_links_from), args.link_seconds)
    demo.queue(default_concurrency_limit=PREDICT_SLOTS, max_size=64)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_FILE_BYTES, theme=THEME,
                css=CSS + WEBCAM_CSS, js=PAGE_SCRIPTS, state_session_capacity=SESSIONS_KEPT,
                app_kwargs={"middleware": [Middleware(RequestSizeLimit, max_bytes=MAX_REQUEST_BYTES,
                                                      upload_bytes=MAX_UPLOAD_BYTES)]})


if __name__ == "__main__":
    main()
