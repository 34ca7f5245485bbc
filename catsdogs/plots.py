"""The training report's figures: loss and accuracy curves, and the validation confusion matrix."""

import matplotlib

matplotlib.use("Agg")  # files only: training runs on headless machines

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def training_curves(history: list[dict]) -> Figure:
    """Loss and accuracy (in %, as the console prints it) per epoch, training beside validation."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4))
    loss, accuracy = figure.subplots(1, 2)
    for axes, key, title, scale in ((loss, "loss", "Loss", 1), (accuracy, "accuracy", "Accuracy (%)", 100)):
        axes.plot(epochs, [row[f"train_{key}"] * scale for row in history], "o-", label="train")
        axes.plot(epochs, [row[f"val_{key}"] * scale for row in history], "o-", label="validation")
        axes.set(title=title, xlabel="epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) < 3:  # too few points: the locator would still draw ticks between epochs
            axes.set_xticks(epochs)
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def confusion_matrix(matrix: list[list[int]], class_names: list[str], title: str) -> Figure:
    """`matrix[true][predicted]` counts as a labelled heat map."""
    figure = Figure(figsize=(4.2, 3.8))
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(class_names))
    axes.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names,
             xlabel="predicted", ylabel="true", title=title)
    top = max(max(row) for row in matrix) or 1
    for true, row in enumerate(matrix):
        for predicted, count in enumerate(row):
            axes.text(predicted, true, str(count), ha="center", va="center",
                      color="white" if count > top / 2 else "black")
    return figure


def reliability_diagram(before: list[tuple[float, float, int]], after: list[tuple[float, float, int]],
                        title: str) -> Figure:
    """Accuracy against confidence per bin (calibration.reliability), before and after the temperature.

    On the diagonal, a confidence of p% is right p% of the time; bars above it mean under-confidence.
    """
    figure = Figure(figsize=(9, 4))
    for axes, rows, name in zip(figure.subplots(1, 2, sharey=True), (before, after),
                                ("without temperature", "with the fitted temperature"), strict=True):
        confidence, accuracy, counts = zip(*rows) if rows else ((), (), ())
        axes.plot([50, 100], [50, 100], "--", color="grey", label="honest")
        axes.scatter([c * 100 for c in confidence], [a * 100 for a in accuracy],
                     s=[20 + 200 * n / max(counts) for n in counts], alpha=0.7, label="bins (size: photos)")
        bottom = min([40, *(a * 100 - 5 for a in accuracy)])  # room for the worst bin, not all of 0..100
        axes.set(title=name, xlabel="confidence (%)", xlim=(48, 101), ylim=(bottom, 101))
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right")
    figure.axes[0].set_ylabel("accuracy (%)")
    figure.suptitle(title)
    return figure
