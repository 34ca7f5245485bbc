"""What scores are computed from logits: the confusion matrix, per-class figures, calibration, and how well a
"not a pet" score ranks pictures of neither above pets (AUROC).

Calibration: a network trained with label smoothing is under-confident: its "87% dog" is right more often than 87
times in 100. Dividing the logits by one temperature T (below 1 sharpens, above 1 softens) fixes most of that
without changing any decision (Guo et al., "On Calibration of Modern Neural Networks", 2017). T is fitted by
minimising the negative log likelihood of the validation photos, and travels in the weights' config.json.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """Counts (classes, classes): [true class][predicted class]."""
    return torch.bincount(labels * classes + predicted, minlength=classes * classes).view(classes, classes)


def auroc(pets: torch.Tensor, others: torch.Tensor) -> float:
    """The chance that a random non-pet scores higher than a random pet (ties count half)."""
    above = (others[:, None] > pets[None, :]).float() + 0.5 * (others[:, None] == pets[None, :]).float()
    return above.mean().item()


def per_class(confusion: torch.Tensor, class_names: list[str] | tuple[str, ...]) -> dict[str, dict]:
    """Precision, recall, F1 and support of each class from `confusion[true][predicted]`; None where undefined."""
    figures = {}
    for c, name in enumerate(class_names):
        hits, support, claimed = confusion[c, c].item(), confusion[c].sum().item(), confusion[:, c].sum().item()
        figures[name] = {"precision": hits / claimed if claimed else None,  # None: undefined, not 0
                         "recall": hits / support if support else None,
                         "f1": 2 * hits / (support + claimed) if support + claimed else None, "support": support}
    return figures


BINS = 15  # the usual choice for the expected calibration error, as in Guo et al.
MIN_PHOTOS = 200  # fewer, and a temperature fits the photos' noise (a few photos all right: T -> 0)
BOUNDS = (0.2, 5.0)  # beyond these the fit is following a degenerate set of photos, not the network


@dataclass
class Calibration:
    """A fitted temperature and what it did to the photos it was fitted on."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    photos: int
    bins_before: list[tuple[float, float, int]]  # reliability(): the diagram without the temperature
    bins_after: list[tuple[float, float, int]]

    def summary(self) -> dict:
        """For metrics.json and the model card."""
        return {"temperature": round(self.temperature, 4), "photos": self.photos, "bins": BINS,
                "ece_before": self.ece_before, "ece_after": self.ece_after,
                "nll_before": self.nll_before, "nll_after": self.nll_after}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the negative log likelihood of softmax(logits / T) for `labels`."""
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(*BOUNDS))


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the photos in each."""
    return sum(count * abs(accuracy - confidence)
               for confidence, accuracy, count in reliability(probabilities, labels, bins)) / len(labels)


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, photos) of each non-empty confidence bin: the reliability diagram's bars."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    which = (confidence.double() * bins).long().clamp(max=bins - 1)  # bin i holds [i/bins, (i+1)/bins)
    rows = []
    for b in range(bins):
        members = which == b
        if members.any():
            rows.append((confidence[members].double().mean().item(), correct[members].mean().item(),
                         int(members.sum())))
    return rows


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> Calibration:
    """Fit the temperature on these logits and measure the calibration before and after."""
    return measure(logits, labels, fit_temperature(logits, labels))


def measure(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> Calibration:
    """How honest softmax(logits / temperature) is for `labels`, against the plain softmax."""
    logits = logits.detach().float().cpu()
    labels = labels.cpu()
    before, after = logits.softmax(dim=1), (logits / temperature).softmax(dim=1)
    return Calibration(
        temperature=temperature,
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        nll_before=F.cross_entropy(logits, labels).item(),
        nll_after=F.cross_entropy(logits / temperature, labels).item(),
        photos=len(labels),
        bins_before=reliability(before, labels),
        bins_after=reliability(after, labels),
    )
