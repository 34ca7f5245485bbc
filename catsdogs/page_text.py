"""What the demo's page says in words: of an answer (its note, its caption; every probability with one decimal),
and of the weights it serves, from their own files (the stated accuracy, the calibration, the "not a pet" rule,
the limits, the model card in short). No Gradio here: app.py puts these texts on the page.
"""

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard

from catsdogs.hub import SHIPPED_WEIGHTS, read_metrics
from catsdogs.inference import NOT_A_PET, UNSURE_BELOW, Answer, Classifier


def percent(probability: float) -> str:
    """How every probability reads on the page, in captions and notes: one decimal."""
    return f"{probability:.1%}"


def answer_note(answer: Answer) -> str:
    """The note under an answer: why it is neither, or that cat against dog is a guess."""
    if answer.not_a_pet:
        return ("🚫 **This doesn't look like a cat or a dog.** It is unlike every photo the network was trained on; "
                "the percentages are what it would answer if it had to choose.")
    if not answer.unsure:
        return ""
    cannot_tell = " These weights cannot tell non-pets: anything else also gets cat or dog." \
        if answer.not_a_pet is None else ""
    return (f"⚠️ **Not sure between cat and dog.** With a top score below {UNSURE_BELOW:.1%} the answer is a "
            f"guess.{cannot_tell}")


def answer_caption(answer: Answer) -> str:
    """An answer in a few words, as the gallery captions it: the top class and its probability, and what else
    the page says of it."""
    top = answer.top_class
    text = f"{top} {percent(answer.probabilities[top])}"
    if answer.not_a_pet:
        return f"{NOT_A_PET} ({text})"
    return text + " · not sure" if answer.unsure else text


@dataclass(frozen=True)
class Accuracy:
    """A validation accuracy the served weights state, and how it was measured."""

    value: float
    measured: str  # where and in what precision, e.g. "fp32 on a CPU"


def stated_accuracy(classifier: Classifier) -> Accuracy | None:
    """The validation accuracy the weights state for the kind of device serving them (metrics.json's
    validation_by_device, written from a catsdogs.evaluate run there); else the one training measured (the model
    card's), saying on what. The two differ by a few photos near 50%."""
    metrics = read_metrics(classifier.folder)
    here = metrics.get("validation_by_device", {}).get(classifier.device.type)
    if here:
        return Accuracy(here["accuracy"], here["measured"])
    if classifier.val_accuracy is None:
        return None
    return Accuracy(classifier.val_accuracy, f"in training, {metrics['device']}" if "device" in metrics
                    else "as the model card states it")


def info_caption(classifier: Classifier | None) -> str:
    """The line under the page saying what runs: the model, its stated accuracy, the device."""
    if classifier is None:
        return "No model loaded."
    source = "the shipped weights" if classifier.source == str(SHIPPED_WEIGHTS) else f"`{classifier.source}`"
    accuracy = stated_accuracy(classifier)
    shown = (f"{percent(accuracy.value)} validation accuracy ({accuracy.measured})" if accuracy
             else "validation accuracy not stated")
    return f"Model: {source} · {shown} · running on the {classifier.device.type.upper()}"


def how_it_works(classifier: Classifier | None, examples: str) -> str:
    """The page's own explanation: the network, how good and how honest it was measured to be, its limits."""
    accuracy = stated_accuracy(classifier) if classifier is not None else None
    if accuracy is not None:
        accuracy = (f"It was right on **{percent(accuracy.value)}** of the validation photos of its model card "
                    f"({accuracy.measured}): Kaggle pet photos it never trained on.")
    else:
        accuracy = "These weights state no accuracy."
    if classifier is not None and classifier.val_calibration_error is not None:
        honesty = (f"The percentages are **calibrated**: answers shown at 90% were right about 90 times in 100 "
                   f"(on average {classifier.val_calibration_error * 100:.1f} percentage points off, the expected "
                   "calibration error).")
    else:
        honesty = "These weights carry no calibration: the percentages are the network's plain softmax."
    return (
        "**The network.** A small convolutional network (786,402 parameters: five blocks of 3×3 convolutions, "
        "then two fully connected layers) trained on Kaggle's *Dogs vs. Cats* photos. It sees "
        f"{what_it_sees(classifier)} and gives each class a probability. {accuracy} {honesty}\n\n"
        f"{neither(classifier)}\n\n"
        "**Where it looked.** The heatmap is Grad-CAM: the parts of the photo that pushed the network towards its "
        "answer are red and yellow, those that did not keep their own colours. It shows what the network used, "
        "not what a person would.\n\n"
        f"**Limits.** {limits(classifier)} Below {UNSURE_BELOW:.1%} for the top class the page says it is not sure "
        "between cat and dog. It judges the whole photo at once: several animals, drawings or a pet far away are "
        f"guesses too. {examples}"
    )


def what_it_sees(classifier: Classifier | None) -> str:
    """What of a photo the network looks at: the whole photo squashed to its input size, or the centred share of
    it that the weights' config.json sets (crop_pct)."""
    crop = classifier.model.crop_pct if classifier is not None else 1.0
    size = classifier.model.image_size if classifier is not None else 224
    if crop == 1:
        return f"the whole photo squashed to {size}×{size} pixels"
    return f"the photo squashed to {size}×{size} pixels, its middle {crop:.0%} (the edges trimmed)"


def tells_non_pets(classifier: Classifier | None) -> bool:
    return classifier is not None and classifier.not_pet_score is not None


def neither(classifier: Classifier | None) -> str:
    """What the page says about its third answer, from the weights' "not a pet" score (or its absence)."""
    if not tells_non_pets(classifier):
        return ("**Not a cat or a dog?** These weights carry no \"not a pet\" score: they cannot tell a photo of "
                "something else, and answer cat or dog for anything.")
    score = classifier.not_pet_score
    return (f"**Not a cat or a dog.** The page also measures how unlike the training photos a photo is: the "
            f"distance from the network's last features to those of the nearest training photos (the {score.k}-th "
            f"nearest of {len(score.bank)}). Above the threshold ({score.rule}), the answer is *{NOT_A_PET}*, and "
            "the two percentages stay, muted.")


def limits(classifier: Classifier | None) -> str:
    if not tells_non_pets(classifier):
        return "It only knows cats and dogs: anything else still gets one of the two, often confidently."
    return ("It knows cats and dogs, and tells apart pictures unlike its photos; faces and many everyday objects "
            "still pass as pets and get cat or dog.")


def examples_answered(classifier: Classifier | None, examples: list[Path]) -> str:
    """What these weights answer for the page's examples, in the gallery's words (so the page never promises
    an answer the weights do not give)."""
    if classifier is None:
        return ""
    said = [f"{photo.stem} → *{answer_caption(answer)}*"
            for photo, answer in zip(examples, classifier.predict(examples), strict=True)]
    return f"What these weights answer for the examples: {'; '.join(said)}."


def short_card(classifier: Classifier, full_card: str | None) -> str:
    """The model card's headline figures, from the weights' own files (metrics.json, config.json, the card's
    metadata), and `full_card`, a link to the whole card, under them."""
    metrics = read_metrics(classifier.folder)
    lines = ["**Model card, in short**"]
    accuracy = stated_accuracy(classifier)
    if accuracy is not None:
        photos = f" of {metrics['n_val']:,} validation photos never trained on" if "n_val" in metrics else ""
        lines.append(f"- Accuracy: {percent(accuracy.value)}{photos} ({accuracy.measured})")
    if classifier.val_calibration_error is not None:
        lines.append(f"- Calibration: {classifier.val_calibration_error * 100:.1f} percentage points off on "
                     "average (expected calibration error)")
    if tells_non_pets(classifier):
        lines.append(f"- Not a cat or a dog: above a distance threshold, {classifier.not_pet_score.rule}")
    if "train_counts" in metrics:
        counts = ", ".join(f"{n:,} {name}s" for name, n in metrics["train_counts"].items())
        lines.append(f"- Training data: {metrics['n_train']:,} photos of Kaggle's *Dogs vs. Cats* ({counts})")
    licence = card_licence(classifier.folder)
    if licence:
        lines.append(f"- Licence: {licence}")
    if full_card:
        lines.append(f"\n{full_card}")
    return "\n".join(lines)


def card_licence(folder: Path) -> str | None:
    try:
        licence = ModelCard.load(folder / "README.md").data.license
    except (OSError, ValueError):
        return None
    return licence.upper() if licence in {"mit", "bsd"} else licence
