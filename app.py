"""The catsdogs demo: drop in a pet photo, or hold your pet up to the webcam, and see cat vs. dog.

    python app.py                                   # the shipped weights/, on http://127.0.0.1:7860
    python app.py --model you/catsdogs --revision main
    CATSDOGS_MODEL=you/catsdogs python app.py       # how a Hugging Face Space picks its model

Weights from the Hub go through the Hub's cache; if the Hub cannot be reached or the
repo is wrong, the page says so and serves the shipped weights/ instead.
"""

import argparse
import os
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
# Behind an HTTP(S) proxy, launch() must still reach its own server on loopback.
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))

import gradio as gr  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from catsdogs.hub import SHIPPED_WEIGHTS, HubError  # noqa: E402
from catsdogs.inference import Classifier, keep_freed_memory  # noqa: E402
from catsdogs.preprocess import BAD_IMAGE_ERRORS  # noqa: E402

# Below this top-class (calibrated) probability the page says it is not sure. Measured on the shipped weights
# (README, "Not sure"): the highest threshold that puts the note on at most one pet photo in eight.
UNSURE_BELOW = 0.85
MAX_FILE_SIZE = "20mb"
NOT_A_PHOTO = "This file is not a photo the app can read (is it a JPEG, PNG, WebP or GIF?)."


@dataclass
class UnreadablePhoto:
    """What PetPhoto hands on instead of a path when PIL cannot open the upload: the reason, for the user."""

    reason: str


class PetPhoto(gr.Image):
    """gr.Image opens every upload with PIL before any handler runs; its failures become UnreadablePhoto values.

    Without this, a text file renamed .jpg fails inside Gradio and the user sees a bare "Error".
    """

    is_template = True  # rendered by gr.Image's own frontend, not looked up as a custom component

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Image.DecompressionBombError as error:
            return UnreadablePhoto(f"This image is too large to process ({error}).")
        except (UnidentifiedImageError, OSError, ValueError):
            return UnreadablePhoto(NOT_A_PHOTO)


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
                   f"{classifier.val_calibration_error:.1%} points from how often answers that sure were right "
                   "(expected calibration error).")
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
    def classify(photo: str | Image.Image | UnreadablePhoto | None) -> dict[str, float]:
        """One photo (a file path, or a frame) -> {class: probability}; the API's /predict."""
        if classifier is None:
            raise gr.Error(startup_warning or "No model is loaded.")
        if photo is None:
            raise gr.Error("No photo given: upload one, paste one, or take a webcam snapshot.")
        if isinstance(photo, UnreadablePhoto):
            raise gr.Error(photo.reason)
        try:
            return classifier.predict([photo])[0]
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
        """Several photo files -> one table row each; unreadable ones get a note, the rest one batched forward."""
        if classifier is None:
            raise gr.Error(startup_warning or "No model is loaded.")
        if not files:
            raise gr.Error("No photos given: choose one or more image files.")
        rows = []
        for path, p in zip(files, classifier.predict_readable(files), strict=True):
            if p is None:
                rows.append([os.path.basename(path), "-", *[None] * len(classifier.class_names), NOT_A_PHOTO])
                continue
            rows.append([os.path.basename(path), max(p, key=p.get),
                         *(round(p[c] * 100, 1) for c in classifier.class_names),
                         "not sure" if unsure_note(p) else ""])
        return rows, info_markdown(classifier)

    class_names = classifier.class_names if classifier else ["cat", "dog"]
    with gr.Blocks(title="Cat or dog?") as demo:
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
                live = gr.Image(sources=["webcam"], streaming=True, type="pil", label="Webcam (live)",
                                elem_id="live", webcam_options=gr.WebcamOptions(
                                    constraints={"video": {"width": {"ideal": 640}}}))
                with gr.Column():
                    live_label = gr.Label(num_top_classes=len(class_names), elem_id="live-prediction",
                                          label="Live prediction (updates twice a second, for up to a minute)")
                    live_note = gr.Markdown(elem_id="live-unsure")
        with gr.Tab("Several photos"):
            files = gr.File(file_count="multiple", file_types=["image"], label="Photos", elem_id="batch")
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
        print(f"serving {classifier.source} on {classifier.device.type}", flush=True)
    demo = build_demo(classifier, warning)
    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_FILE_SIZE)


if __name__ == "__main__":
    main()
