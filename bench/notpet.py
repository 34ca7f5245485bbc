"""Choosing the "not a pet" score: how well each score tells pets from non-pets, measured on real pictures.

    python -m bench.notpet --data ../shared/data/dogs-vs-cats-200/train \\
        --full-size ../shared/data/dogs-vs-cats-fullres-sample --pictures DIR... --features FILE.pt
    python -m bench.notpet --data ../shared/data/dogs-vs-cats-200/train \
        --full-size ../shared/data/dogs-vs-cats-fullres-sample --cost    # what the score adds to one answer

Every score is fitted on training photos only (no non-pet is ever fitted on): a bank of --bank-per-class
training photos of each class (never one of the full-size photos, whose 200px copies are in the training set).
Its threshold follows catsdogs.notpet's rule (at most 5% of validation pets above it), set on half of the
validation photos measured; the other half is the "val pets 200px" column. Compared: the top softmax probability
(MSP), energy (logsumexp of the logits), Mahalanobis distance (class means, one shared covariance) and KNN
distance (Sun et al. 2022) on three layers, of L2-normalised features or raw ones ("raw"), each with and without
the mirror view; then KNN's k and bank size.

Pets: --val-per-class photos of each class of the validation split (never trained on) and the full-size photos of
--full-size. Non-pets: the photos in NON_PET_PHOTOS that ship in installed packages (matplotlib's and Gradio's
sample images) and in examples/, and those found in --pictures folders: scikit-image's and scikit-learn's
sample images (`pip download --no-deps scikit-image scikit-learn` and unzip the wheels there) and KDE Plasma's
CC0 account pictures (Debian's plasma-workspace-data: `apt-get download plasma-workspace-data` and
`dpkg-deb -x` it there; its cat and dog are left out). Lions and
cheetahs are kept apart: a wild cat is not a pet, yet a cat model may rightly find it cat-like. Every group is
also measured with each picture first squashed to 200x200 (the training photos' size) and shrunk to 64x64 and
back (a quarter of the validation photos), so that sharpness is no shortcut.

Extracting the features takes minutes on a CPU; --features keeps them, and a later run only scores.
"""

import argparse
import copy
import statistics
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from bench.common import report, timings
from catsdogs.cache import decoded_photos
from catsdogs.data import Photos
from catsdogs.hub import SHIPPED_WEIGHTS, load_model
from catsdogs.inference import UNSURE_BELOW, Classifier  # UNSURE_BELOW: every surface's "not sure"
from catsdogs.metrics import auroc
from catsdogs.model import network_input, predict_logits, predict_with_features
from catsdogs.model import CatsDogsCNN
from catsdogs.fit_notpet import sample, training_split
from catsdogs.notpet import NEIGHBOUR, threshold_for
from catsdogs.preprocess import load_photo, open_rgb

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("as is", "200px", "64px")  # each picture as it is, squashed to 200x200 first, shrunk to 64x64 and back
LAYERS = ("conv", "fc1", "penultimate")  # the 800 conv features, the first 512-unit ReLU, the one the head reads

# Photos only: the icons, logos, drawings, synthetic test patterns and tiny (<100 px) images beside them are left
# out, and so are duplicates (scikit-image's brick, coffee, grass and gravel are examples/' photos; one of its stereo
# pair).
NON_PET_PHOTOS = {
    "matplotlib": ["grace_hopper.jpg"],
    "gradio": ["tower.jpg", "groot.jpeg"],
    "examples/": ["brick.jpg", "coffee.jpg", "grass.jpg", "gravel.jpg"],
    "scikit-image": ["astronaut.png", "camera.png", "cell.png", "clock_motion.png", "coins.png",
                     "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "page.png",
                     "retina.jpg", "rocket.jpg", "text.png"],
    "scikit-learn": ["china.jpg", "flower.jpg"],
    "KDE Plasma": [f"{name}.png" for name in ("Air Balloon", "Astronaut", "Books", "Brushes", "Bulb", "Car",
                                              "Chameleon", "Cocktail", "Fish", "Gamepad", "Owl", "Pancakes",
                                              "Parrot", "Pencils", "Shuttle", "Soccer", "Sunflower", "Sushi")],
}
WILD_CATS = {"gradio": ["cheetah.jpg", "cheetah1.jpg", "lion.jpg", "cheetah2.jpg"]}


def package_folders(pictures: list[Path]) -> dict[str, list[Path]]:
    """Where each source's pictures may be: installed packages, examples/, and the --pictures folders."""
    gradio = Path(find_spec("gradio").origin).parent
    matplotlib = Path(find_spec("matplotlib").origin).parent
    found = {"matplotlib": [matplotlib / "mpl-data" / "sample_data"],
             "gradio": [gradio / "media_assets" / "images", gradio / "test_data"], "examples/": [ROOT / "examples"]}
    for folder in pictures:
        found.setdefault("scikit-image", []).extend(folder.glob("**/skimage/data"))
        found.setdefault("scikit-learn", []).extend(folder.glob("**/sklearn/datasets/images"))
        found.setdefault("KDE Plasma", []).extend(folder.glob("**/plasma/avatars/photos"))
    return found


def find_pictures(names: dict[str, list[str]], folders: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """The named pictures of each source that are on this machine."""
    return {source: [next(p for f in folders.get(source, []) if (p := f / name).is_file())
                     for name in files if any((f / name).is_file() for f in folders.get(source, []))]
            for source, files in names.items()}


def resized(source: Path | Image.Image, size: str, input_size: int) -> torch.Tensor:
    """A picture as the network's uint8 input, as it is (decoded as the app decodes a file) or first squashed/shrunk
    to `size`."""
    if size == "as is":
        return load_photo(source, input_size)
    image = open_rgb(source) if isinstance(source, Path) else source
    side = int(size.removesuffix("px"))
    return load_photo(image.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=3.0), input_size)


@dataclass
class Views:
    """One group of pictures through the network: each layer's features and the logits, for the photo (view 0)
    and its mirror image (view 1)."""

    layers: dict[str, torch.Tensor]  # name -> (2, N, d)
    logits: torch.Tensor  # (2, N, classes)

    def layer(self, name: str, mirror: bool) -> torch.Tensor:
        return self.layers[name].mean(dim=0) if mirror else self.layers[name][0]

    def logit(self, mirror: bool) -> torch.Tensor:
        return self.logits.mean(dim=0) if mirror else self.logits[0]


@torch.inference_mode()
def views_of(model: CatsDogsCNN, images: torch.Tensor, batch: int = 64) -> Views:
    """Every layer's features and the logits of uint8 photos and their mirror images (fp32, as predictions run:
    through `network_input`, the weights' crop included)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [model.blocks.register_forward_hook(lambda m, a, out: captured.__setitem__("conv", out.flatten(1))),
             model.fc[2].register_forward_hook(lambda m, a, out: captured.__setitem__("fc1", out.clone()))]
    layers: dict[str, list[torch.Tensor]] = {name: [] for name in LAYERS}
    logits = []
    for chunk in tqdm(images.split(batch), desc="features", unit="batch", leave=False):
        x = network_input(model, chunk)  # as predictions see a photo: normalised, config.json's crop
        both = torch.cat([x, x.flip(-1)])
        out, captured["penultimate"] = model.logits_and_features(both)
        logits.append(out.unflatten(0, (2, -1)))
        for name in LAYERS:
            layers[name].append(captured[name].unflatten(0, (2, -1)))
    for hook in hooks:
        hook.remove()
    return Views({name: torch.cat(parts, dim=1) for name, parts in layers.items()}, torch.cat(logits, dim=1))


def bench_photos(args: argparse.Namespace) -> tuple[Photos, Photos]:
    """The bank's training photos and the validation photos measured. The full-size photos are in the 200px set
    too: they are never in the bank, or each would find its own copy there."""
    held_out = {path.name for path in args.full_size.glob("*.jpg")}
    split = training_split(Path(args.model), args.data)
    train = split.train.subset([i for i, p in enumerate(split.train.paths) if Path(p).name not in held_out])
    return sample(train, args.bank_per_class), sample(split.val, args.val_per_class)


def extract(args: argparse.Namespace, model: CatsDogsCNN) -> dict[str, Views]:
    """Each group of pictures at each size through the network; saved to --features group by group."""
    saved = torch.load(args.features) if args.features.exists() else {}  # name -> {layer or "logits": tensor}
    done = {name: Views({k: v for k, v in parts.items() if k != "logits"}, parts["logits"])
            for name, parts in saved.items()}
    size = model.image_size
    full_size = sorted(args.full_size.glob("*.jpg"))
    bank, val = bench_photos(args)
    folders = package_folders(args.pictures)
    groups = {f"{kind} {s}": (lambda s=s, names=names: torch.stack(
                  [resized(p, s, size) for ps in find_pictures(names, folders).values() for p in ps]))
              for kind, names in (("non-pets", NON_PET_PHOTOS), ("wild cats", WILD_CATS)) for s in SIZES}
    groups |= {f"full-size pets {s}": (lambda s=s: torch.stack([resized(p, s, size) for p in full_size]))
               for s in SIZES}
    groups["val pets 64px"] = lambda: torch.stack([resized(Path(p), "64px", size)
                                                  for p in sample(val, args.val_per_class // 4).paths])
    groups["bank"] = lambda: decoded_photos(bank, size, 2, "bank", True).images
    groups["val pets 200px"] = lambda: decoded_photos(val, size, 2, "validation", True).images
    for name, load in groups.items():
        if name not in done:
            images = load()
            print(f"{name}: {len(images)} pictures", flush=True)
            done[name] = views_of(model, images)
            torch.save({name: {**v.layers, "logits": v.logits} for name, v in done.items()}, args.features)
    return done



def knn_scorer(bank: torch.Tensor, k: int, normalise: bool):
    """The distance to the k-th nearest of `bank`, of L2-normalised features or raw ones."""
    prepare = (lambda f: torch.nn.functional.normalize(f, dim=1)) if normalise else (lambda f: f)
    bank = prepare(bank)
    return lambda f: torch.cdist(prepare(f), bank).topk(k, dim=1, largest=False).values[:, -1]


def mahalanobis_scorer(bank: torch.Tensor, labels: torch.Tensor):
    """The squared Mahalanobis distance to the nearest class mean, with one covariance shared by the classes."""
    means = torch.stack([bank[labels == c].mean(dim=0) for c in labels.unique()])
    centred = bank - means[labels]
    covariance = centred.T @ centred / len(bank) + 1e-6 * torch.eye(bank.shape[1])
    precision = torch.linalg.inv(covariance.double()).float()
    return lambda f: torch.stack([((f - m) @ precision * (f - m)).sum(dim=1) for m in means]).min(dim=0).values


@dataclass
class Setting:
    """One way of scoring: a name for the table, and a function from a group's Views to (N,) scores."""

    method: str
    layer: str
    mirror: bool
    scores: object  # Callable[[Views], torch.Tensor]


def settings(bank: Views, labels: torch.Tensor, temperature: float) -> list[Setting]:
    found = []
    for mirror in (True, False):
        found += [Setting("MSP", "logits", mirror,
                          lambda v, m=mirror: -(v.logit(m) / temperature).softmax(1).max(1).values),
                  Setting("energy", "logits", mirror, lambda v, m=mirror: -v.logit(m).logsumexp(1))]
        for layer in LAYERS:
            fitted = bank.layer(layer, mirror)
            for normalise in (True, False):
                prepare = (lambda f: torch.nn.functional.normalize(f, dim=1)) if normalise else (lambda f: f)
                maha = mahalanobis_scorer(prepare(fitted), labels)
                found.append(Setting(f"Mahalanobis{'' if normalise else ', raw'}", layer, mirror,
                                     lambda v, s=maha, p=prepare, at=layer, m=mirror: s(p(v.layer(at, m)))))
                knn = knn_scorer(fitted, 5, normalise)
                found.append(Setting(f"KNN k=5{'' if normalise else ', raw'}", layer, mirror,
                                     lambda v, s=knn, at=layer, m=mirror: s(v.layer(at, m))))
    return found


def sweep(bank: Views, labels: torch.Tensor) -> list[Setting]:
    """KNN on L2-normalised penultimate features with the mirror view: k against the bank's size."""
    found = []
    per_class = len(labels) // 2
    for size in (per_class // 8, per_class // 4, per_class // 2, per_class):
        kept = torch.cat([(labels == c).nonzero().flatten()[:size] for c in labels.unique()])
        for k in (1, 5, 10, 20, 50):
            knn = knn_scorer(bank.layer("penultimate", True)[kept], k, True)
            found.append(Setting(f"KNN k={k}, bank {2 * size}", "penultimate", True,
                                 lambda v, s=knn: s(v.layer("penultimate", True))))
    return found


PET_GROUPS = ("val pets 200px", "val pets 64px", "full-size pets as is", "full-size pets 200px", "full-size pets 64px")
OTHER_GROUPS = ("non-pets as is", "non-pets 200px", "non-pets 64px", "wild cats as is")
AUROC_PAIRS = {"AUROC as is": ("full-size pets as is", "non-pets as is"),  # full-size photos against full-size
               "AUROC 200px": ("val pets 200px", "non-pets 200px"),  # both at the training photos' size
               "AUROC 64px": ("val pets 64px", "non-pets 64px")}


def table_rows(found: list[Setting], views: dict[str, Views]) -> list[list]:
    """Per setting: AUROC per size, and the share of each group flagged at the threshold set on half the
    validation pets (the other half is the "val pets 200px" column)."""
    rows = []
    for setting in found:
        scores = {name: setting.scores(views[name]) for name in PET_GROUPS + OTHER_GROUPS}
        val = scores["val pets 200px"]
        threshold = threshold_for(val[0::2])
        scores["val pets 200px"] = val[1::2]
        flagged = [f"{(scores[name] > threshold).float().mean().item():.1%}" for name in PET_GROUPS + OTHER_GROUPS]
        aurocs = [f"{auroc(scores[pets], scores[others]):.3f}" for pets, others in AUROC_PAIRS.values()]
        rows.append([setting.method, setting.layer, "yes" if setting.mirror else "no", *aurocs, *flagged])
    return rows






def unsure_rows(views: dict[str, Views], labels: dict[str, torch.Tensor], setting: Setting,
                temperature: float) -> list[list]:
    """What "not sure" says beside the not-a-pet score: per group, the pets' accuracy under and over the app's
    UNSURE_BELOW among the photos the score keeps, and how many pictures each verdict takes."""
    threshold = threshold_for(setting.scores(views["val pets 200px"]))
    rows = []
    for name in ("val pets 200px", "full-size pets as is", "val pets 64px", *OTHER_GROUPS):
        probabilities = (views[name].logit(True) / temperature).softmax(dim=1)
        kept = setting.scores(views[name]) <= threshold
        unsure = probabilities.max(dim=1).values < UNSURE_BELOW
        row = [name, len(kept), f"{(~kept).float().mean().item():.1%}", f"{(kept & unsure).float().mean():.1%}",
               f"{(kept & ~unsure).float().mean():.1%}"]
        if name in labels:
            right = probabilities.argmax(dim=1) == labels[name]
            row += [f"{right[kept & unsure].float().mean().item():.1%} of {(kept & unsure).sum().item()}",
                    f"{right[kept & ~unsure].float().mean().item():.1%} of {(kept & ~unsure).sum().item()}"]
        rows.append(row + ["-"] * (7 - len(row)))
    return rows



def picture_rows(names: list[str], views: dict[str, Views], setting: Setting, temperature: float) -> list[list]:
    """Each non-pet picture (as it is): its score, the verdict, and the top class probability, highest first."""
    threshold = threshold_for(setting.scores(views["val pets 200px"]))
    scores = setting.scores(views["non-pets as is"]).tolist()
    top = (views["non-pets as is"].logit(True) / temperature).softmax(dim=1).max(dim=1).values.tolist()
    return [[name, f"{score:.3f}", f"{threshold:.3f}", "not a pet" if score > threshold else "pet", f"{p:.3f}"]
            for name, score, p in sorted(zip(names, scores, top, strict=True), key=lambda row: -row[1])]


def cost(weights: str, photo: Path, rounds: int = 30) -> list[list]:
    """Milliseconds for one photo's answer on the app's path (Classifier's model, layout and mirror TTA, the weights'
    own score): the network alone, the network with the features kept, the score of those features, and the whole
    answer (decoding included) with and without the score."""
    classifier = Classifier(weights)
    without_score = copy.copy(classifier)
    without_score.not_pet_score = None
    image = load_photo(photo, classifier.model.image_size)[None]
    features = predict_with_features(classifier.model, image)[1]
    steps = {"network (predict_logits)": lambda: predict_logits(classifier.model, image),
             "network, features kept (predict_with_features)": lambda: predict_with_features(classifier.model, image),
             "the score (NotPetScore.is_pet)": lambda: classifier.not_pet_score.is_pet(features),
             "the answer without the score (Classifier.predict)": lambda: without_score.predict([photo]),
             "the answer with the score (Classifier.predict)": lambda: classifier.predict([photo])}
    seconds = {name: [] for name in steps}
    for _ in range(rounds):  # interleaved: a burst of load elsewhere hits every step alike
        for name, step in steps.items():
            seconds[name].extend(timings(step, runs=1, warmup=0, device=torch.device("cpu")))
    network = statistics.median(seconds["network (predict_logits)"])
    return [[name, 1000 * min(s), 1000 * statistics.median(s), f"{statistics.median(s) / network:.2%}"]
            for name, s in seconds.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS))
    parser.add_argument("--data", type=Path, required=True, help="the training data (Kaggle's 200px photos)")
    parser.add_argument("--full-size", type=Path, required=True, help="full-size pet photos, none in the bank")
    parser.add_argument("--pictures", type=Path, nargs="*", default=[], help="folders holding more NON_PET_PHOTOS")
    parser.add_argument("--features", type=Path, help="where the extracted features are kept (not for --cost)")
    parser.add_argument("--bank-per-class", type=int, default=1000, help="training photos of each class fitted on")
    parser.add_argument("--val-per-class", type=int, default=500, help="validation photos of each class")
    parser.add_argument("--cost", action="store_true", help="time the score on one photo instead")
    args = parser.parse_args()
    if not args.cost and args.features is None:
        parser.error("--features is needed (where the extracted features are kept)")
    model = load_model(args.model).eval().to(memory_format=torch.channels_last)
    if args.cost:
        report("The score's cost per photo (median of interleaved rounds)", ["step", "min ms", "median ms",
               "median / network's"], cost(args.model, sorted(args.full_size.glob("*.jpg"))[0]))
        return
    views = extract(args, model)
    bank, val = bench_photos(args)
    labels = torch.tensor(bank.labels)
    for kind, names in (("non-pets", NON_PET_PHOTOS), ("wild cats", WILD_CATS)):
        found = find_pictures(names, package_folders(args.pictures))
        print(f"{kind}: " + "; ".join(f"{source} {len(paths)} ({', '.join(p.name for p in paths)})"
                                      for source, paths in found.items()))
    columns = ["method", "layer", "mirror", *AUROC_PAIRS, *(f"flagged: {name}" for name in PET_GROUPS + OTHER_GROUPS)]
    counts = {name: len(v.logits[0]) for name, v in views.items()}
    report("Not-a-pet scores: AUROC and the share flagged at the threshold that flags 5% of validation pets",
           columns, table_rows(settings(views["bank"], labels, model.temperature), views), {"counts": counts})
    chosen = next(s for s in sweep(views["bank"], labels) if s.method == f"KNN k={NEIGHBOUR}, bank {len(labels)}")
    known = {"val pets 200px": torch.tensor(val.labels),
             "val pets 64px": torch.tensor(sample(val, args.val_per_class // 4).labels),
        "full-size pets as is": torch.tensor([int(p.name.startswith("dog")) for p in
                                              sorted(args.full_size.glob("*.jpg"))])}
    report(f"'Not sure' (top probability under {UNSURE_BELOW}) beside the chosen score ({chosen.method})",
           ["pictures", "n", "not a pet", "pet, not sure", "pet, sure", "accuracy when not sure",
            "accuracy when sure"], unsure_rows(views, known, chosen, model.temperature))
    names = [p.name for paths in find_pictures(NON_PET_PHOTOS, package_folders(args.pictures)).values() for p in paths]
    report(f"Each non-pet picture as it is: {chosen.method} (threshold from all validation photos measured)",
           ["picture", "distance", "threshold", "verdict", "top probability"],
           picture_rows(names, views, chosen, model.temperature))
    report("KNN: k and the bank's size (penultimate layer, L2-normalised, mirror view)", columns,
           table_rows(sweep(views["bank"], labels), views))


if __name__ == "__main__":
    main()
