"""The catsdogs demo: drop in a pet photo, or hold your pet up to the webcam, and see cat vs. dog.

    python app.py                                   # the shipped weights/, on http://127.0.0.1:7860
    python app.py --model you/catsdogs --revision main
    CATSDOGS_MODEL=you/catsdogs python app.py       # how a Hugging Face Space picks its model

Weights from the Hub go through the Hub's cache; if the Hub cannot be reached or the
repo is wrong, the page says so and serves the shipped weights/ instead.

What one request may cost is bounded (README, "Limits and memory"): photos over preprocess.MAX_PIXELS are refused
before decoding however they arrive (upload, webcam, `data:` URL, link, live frame), a batch takes at most
MAX_BATCH_FILES photos, run Classifier.chunk at a time, and request bodies are capped.
"""

import argparse
import base64
import io
import os
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
# Behind an HTTP(S) proxy, launch() must still reach its own server on loopback.
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))

import gradio as gr  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from catsdogs.hub import SHIPPED_WEIGHTS, HubError  # noqa: E402
from catsdogs.inference import Classifier, keep_freed_memory  # noqa: E402
from catsdogs.preprocess import BAD_IMAGE_ERRORS, ImageTooLarge  # noqa: E402
from catsdogs.serving import LinkError, RequestSizeLimit, fetch_linked_photo  # noqa: E402

# Below this top-class (calibrated) probability the page says it is not sure. Measured on the shipped weights
# (README, "Not sure"): the highest threshold that puts the note on at most one pet photo in eight.
UNSURE_BELOW = 0.85
NOT_A_PHOTO = "This file is not a photo the app can read (is it a JPEG, PNG, WebP or GIF?)."
# Limits per request (README, "Limits and memory"): each bounds the memory or the time one request can take.
MAX_FILE_BYTES = 20 * 2**20  # one photo file, uploaded or linked
MAX_BATCH_FILES = 100  # photos per "Several photos" batch: ~5-10 s of the 2 CPU cores, one queue slot
MAX_REQUEST_BYTES = 8 * 2**20  # any other request body (JSON, parsed in memory): a phone photo as a data: URL fits
MAX_UPLOAD_BYTES = MAX_BATCH_FILES * MAX_FILE_BYTES + 2**20  # one upload request (streamed to disk, not memory)
CACHE_SECONDS = 600  # uploads and linked photos are deleted from Gradio's cache after 10 minutes


@dataclass
class UnreadablePhoto:
    """What PetPhoto hands on instead of a path when PIL cannot open the upload: the reason, for the user."""

    reason: str


def too_large(error: Exception) -> str:
    return f"This image is too large: {error}. Send a smaller copy of it."


class PetPhoto(gr.Image):
    """gr.Image that never decodes a photo itself: every input reaches the handler as a file (or the bytes of a
    `data:` URL), for Classifier to decode under its pixel limit; what cannot be read becomes an UnreadablePhoto.

    Without this, gr.Image decodes a `data:` URL (an API call, a live frame) in full before any check, Gradio
    downloads a link whole into memory, and a text file renamed .jpg fails inside Gradio with a bare "Error".
    """

    is_template = True  # rendered by gr.Image's own frontend, not looked up as a custom component

    def preprocess(self, payload):
        if payload is not None and payload.url and payload.url.startswith("data:"):
            header, _, data = payload.url.partition(",")
            try:
                if not header.endswith(";base64"):
                    raise ValueError("not base64")
                return io.BytesIO(base64.b64decode(data, validate=True))
            except ValueError:  # binascii.Error is one
                return UnreadablePhoto(NOT_A_PHOTO)
        try:
            return super().preprocess(payload)  # type="filepath": opens the file's header only
        except Image.DecompressionBombError:
            return UnreadablePhoto(too_large(f"it has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"))
        except (UnidentifiedImageError, OSError, ValueError):
            return UnreadablePhoto(NOT_A_PHOTO)

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        """A linked photo (gradio_client.handle_file(url)) is fetched with a size limit, not read whole."""
        if isinstance(url_or_file_path, str) and url_or_file_path.startswith(("http://", "https://")):
            try:
                path = str(await fetch_linked_photo(url_or_file_path, self.GRADIO_CACHE, MAX_FILE_BYTES))
            except LinkError as error:
                raise gr.Error(f"The linked photo cannot be used: {error}.", print_exception=False) from None
            self.temp_files.add(path)
            return path
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class Demo(gr.Blocks):
    """gr.Blocks whose API calls with inputs of the wrong kind get the reason, not Gradio's bare {"error": null}."""

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:  # already a message for the user (gr.Error is a ValueError too)
            raise
        except ValidationError as error:  # the value is not what the component takes (e.g. a string for a photo)
            problems = "; ".join(f"{problem['msg']} (got {problem['input']!r:.60})" for problem in error.errors()[:3])
            raise gr.Error(bad_input(block_fn, problems), print_exception=False) from None
        except ValueError as error:  # too few values, a file path that was never uploaded, ...
            raise gr.Error(bad_input(block_fn, str(error).splitlines()[0].rstrip(".")), print_exception=False) from None


def bad_input(block_fn, problem: str) -> str:
    name = f"/{block_fn.api_name}" if block_fn.api_name else "this event"
    return (f"The input of {name} is not what it takes: {problem}. Send photos as files with "
            "gradio_client.handle_file(path_or_url) (see the page's \"Use via API\" link).")


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


def info_markdown(classifier: Classifier | None) -> str:
    if classifier is None:
        return "**No model loaded.**"
    accuracy = f"{classifier.val_accuracy:.2%}" if classifier.val_accuracy is not None else "not stated"
    last = f"{classifier.last_seconds * 1000:.0f} ms" if classifier.last_seconds is not None else "none yet"
    source = "shipped `weights/`" if classifier.source == str(SHIPPED_WEIGHTS) else f"`{classifier.source}`"
    return (f"**Model:** {source} · **validation accuracy:** {accuracy} · **device:** {classifier.device.type} · "
            f"**last prediction:** {last}")


def how_it_works(classifier: Classifier | None) -> str:
    """What the percentages mean, and how honest they were measured to be (README, "Calibration")."""
    if classifier is not None and classifier.val_calibration_error is not None:
        honesty = (f"They are **calibrated**: on photos the model never trained on, answers shown at 90% were right "
                   f"about 90 times in 100, and on average a shown percentage was "
                   f"{classifier.val_calibration_error * 100:.1f} percentage points from how often answers that sure "
                   "were right (expected calibration error).")
    else:
        honesty = "These weights carry no calibration: the percentages are the network's plain softmax."
    return ("The network sees the whole photo squashed to 224×224 pixels and gives each class a probability. "
            f"{honesty} Below {UNSURE_BELOW:.0%} for the top class the page says it is not sure. It only knows "
            "cats and dogs: a photo of anything else still gets one of the two, often confidently.")


def unsure_note(probabilities: dict[str, float]) -> str:
    if max(probabilities.values()) >= UNSURE_BELOW:
        return ""
    return ("⚠️ **Not sure this is a cat or a dog.** The model only knows these two classes; "
            "with a top score below {:.0%} the answer is a guess.".format(UNSURE_BELOW))


def build_demo(classifier: Classifier | None, startup_warning: str = "") -> gr.Blocks:
    def classify(photo: str | io.BytesIO | UnreadablePhoto | None) -> dict[str, float]:
        """One photo (a file, or a data: URL's bytes) -> {class: probability}; the API's /predict."""
        if classifier is None:
            raise gr.Error(startup_warning or "No model is loaded.")
        if photo is None:
            raise gr.Error("No photo given: upload one, paste one, or take a webcam snapshot.")
        if isinstance(photo, UnreadablePhoto):
            raise gr.Error(photo.reason)
        try:
            return classifier.predict([photo])[0]
        except ImageTooLarge as error:
            raise gr.Error(too_large(error)) from None
        except BAD_IMAGE_ERRORS:
            raise gr.Error(NOT_A_PHOTO + " It may be damaged or cut short.") from None

    def show(photo):
        """The page's photo: a result, or cleared outputs and the reason in a toast (never an old result)."""
        if photo is None:  # the photo was removed
            return None, "", info_markdown(classifier)
        try:
            probabilities = classify(photo)
        except gr.Error as error:
            gr.Warning(error.message)
            return None, "", info_markdown(classifier)
        return probabilities, unsure_note(probabilities), info_markdown(classifier)

    def classify_many(files: list[str] | None):
        """Several photo files -> one table row each; unreadable ones get a note. At most MAX_BATCH_FILES."""
        if classifier is None:
            raise gr.Error(startup_warning or "No model is loaded.")
        if not files:
            raise gr.Error("No photos given: choose one or more image files.")
        if len(files) > MAX_BATCH_FILES:
            raise gr.Error(f"Too many photos: {len(files)} at once, and a batch takes at most {MAX_BATCH_FILES}. "
                           f"Classify them in batches of {MAX_BATCH_FILES}.")
        rows = []
        for path, p in zip(files, classifier.predict_readable(files), strict=True):
            if isinstance(p, Exception):
                note = too_large(p) if isinstance(p, ImageTooLarge) else NOT_A_PHOTO
                rows.append([os.path.basename(path), "-", *[None] * len(classifier.class_names), note])
                continue
            rows.append([os.path.basename(path), max(p, key=p.get),
                         *(round(p[c] * 100, 1) for c in classifier.class_names),
                         "not sure" if unsure_note(p) else ""])
        return rows, info_markdown(classifier)

    class_names = classifier.class_names if classifier else ["cat", "dog"]
    # Uploads and linked photos live in Gradio's cache: every CACHE_SECONDS, files older than that are deleted.
    with Demo(title="Cat or dog?", delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as demo:
        gr.Markdown("# Cat or dog?\nGive it a photo of a pet: upload it, paste it, or take a webcam "
                    "snapshot. A small CNN (786k parameters) answers with the probability of each class.")
        with gr.Accordion("How it works: what the percentages mean", open=False):
            gr.Markdown(how_it_works(classifier), elem_id="how-it-works")
        if startup_warning:
            gr.Markdown(f"⚠️ {startup_warning}", elem_id="startup-warning")
        with gr.Tab("Photo"):
            with gr.Row():
                photo = PetPhoto(type="filepath", sources=["upload", "webcam", "clipboard"], label="Pet photo",
                                 image_mode=None, elem_id="photo",
                                 webcam_options=gr.WebcamOptions(constraints={"video": {"width": {"ideal": 640}}}))
                with gr.Column():
                    label = gr.Label(num_top_classes=len(class_names), label="Prediction", elem_id="prediction")
                    note = gr.Markdown(elem_id="unsure")
        with gr.Tab("Live webcam"):
            with gr.Row():
                live = PetPhoto(sources=["webcam"], streaming=True, type="filepath", label="Webcam (live)",
                                elem_id="live", image_mode=None, webcam_options=gr.WebcamOptions(
                                    constraints={"video": {"width": {"ideal": 640}}}))
                with gr.Column():
                    live_label = gr.Label(num_top_classes=len(class_names), elem_id="live-prediction",
                                          label="Live prediction (updates twice a second, for up to a minute)")
                    live_note = gr.Markdown(elem_id="live-unsure")
        with gr.Tab("Several photos"):
            files = gr.File(file_count="multiple", file_types=["image"], label=f"Photos (up to {MAX_BATCH_FILES})",
                            elem_id="batch")
            run_batch = gr.Button("Classify all", variant="primary", elem_id="batch-run")
            table = gr.Dataframe(headers=["photo", "prediction", *(f"{c} %" for c in class_names), "note"],
                                 elem_id="batch-results", interactive=False)
        info = gr.Markdown(info_markdown(classifier), elem_id="info")

        # Photos, batches and API calls share one queue slot pool ("predict", 2 at a time: 2 CPU cores);
        # live streams have their own, as each holds its slot for up to time_limit.
        photo.change(show, photo, [label, note, info], api_visibility="private", concurrency_id="predict")
        live.stream(lambda frame: show(frame)[:2], live, [live_label, live_note], stream_every=0.5,
                    time_limit=60, concurrency_limit=4, api_visibility="private")
        run_batch.click(classify_many, files, [table, info], api_name="predict_many", concurrency_id="predict")
        # The API endpoint: the same photo input, answered with the label alone (see README, "API").
        gr.Button(visible=False).click(classify, photo, label, api_name="predict", concurrency_id="predict")
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
    args = parser.parse_args()

    keep_freed_memory()  # this process serves one model: keep its activations' memory between requests
    classifier, warning = load_classifier(args.model, args.revision)
    if classifier is not None:
        print(f"serving {classifier.source} on {classifier.device.type}; {classifier.layout.describe()}", flush=True)
    demo = build_demo(classifier, warning)
    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_FILE_BYTES,
                app_kwargs={"middleware": [Middleware(RequestSizeLimit, max_bytes=MAX_REQUEST_BYTES,
                                                      upload_bytes=MAX_UPLOAD_BYTES)]})


if __name__ == "__main__":
    main()
