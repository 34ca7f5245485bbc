"""The GPU benchmarks and the recipe sweep on a rented GPU machine: the photos shipped in chunks, smoke runs,
benchmarks, the sweep, the results brought back (docs/gpu.md).

Here, once (no GPU needed):
    python -m bench.gpu_session pack        # .data/chunks/photos-K-of-N.tar.gz and .whl/, to ship with the code
There, after each chunk arrives:
    python3 -m bench.gpu_session setup                # the wheels -> /tmp/catsdogs-site, the chunks -> .data/photos/
    python3 -m bench.gpu_session session --seconds 480   # benchmarks compiled and eager, time to 95%, the long run
    python3 -m bench.gpu_session smoke                # train.py on CUDA, torchrun (NCCL), evaluate, the Classifier
    python3 -m bench.gpu_session bench                # bench.inference and bench.training on CUDA
    python3 -m bench.gpu_session sweep --budget 500   # the recipes, chosen on validation; run again to go on

Every step writes its logs and results to $OUT (the folder to bring back; runs/gpu-out/ when unset).
Nothing here imports gradio, which the GPU machine lacks: `smoke` checks it. That machine's huggingface_hub is
1.x and it has no httpx2, so `pack` also downloads the pinned versions of what catsdogs needs and it lacks
(NOT_THERE), and every step puts them first on the path.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CHUNKS = ROOT / ".data" / "chunks"  # ignored by git; shipped to the GPU machine one chunk at a time
PHOTOS = ROOT / ".data" / "photos"  # where `setup` unpacks them on the GPU machine
TRAIN = "dogs-vs-cats-200/train"
FULLRES = "dogs-vs-cats-fullres-sample"
WHEELS = ROOT / ".whl"  # ignored by git; carried with every call
SITE = Path("/tmp/catsdogs-site")  # where `setup` installs them on the GPU machine
CARRY_LIMIT_MIB = 64  # what one transfer to the GPU machine may hold, the code included
# Not on a typical GPU machine's Python (huggingface_hub 1.x there, no httpx2), at the versions
# installed here, i.e. the ones requirements.txt pins and the tests ran with; the rest it has.
NOT_THERE = ("huggingface-hub", "httpx2", "httpcore2", "truststore", "xxhash")


def out_dir() -> Path:
    out = Path(os.environ.get("OUT") or ROOT / "runs" / "gpu-out")  # runs/: ignored by git
    out.mkdir(parents=True, exist_ok=True)
    return out


def photo_order(path: Path) -> tuple[int, str]:
    """Kaggle's cat.<id>.jpg / dog.<id>.jpg by id, then class: every chunk holds both classes in equal shares."""
    label, number = path.stem.split(".", 1)
    return int(number) if number.isdigit() else 0, label


# ---- pack (here) and setup (there) ----

def download_wheels(folder: Path) -> None:
    """The wheels of NOT_THERE for the GPU machine's Python 3.12 on x86-64."""
    from importlib.metadata import version

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    platforms = [arg for tag in ("manylinux_2_28", "manylinux_2_17", "manylinux2014") for arg in
                 ("--platform", f"{tag}_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder),
                    *(f"{name}=={version(name)}" for name in NOT_THERE)], check=True)


def pack(data: Path, chunks: Path, max_mib: float, fullres: int) -> list[Path]:
    """The training photos (and `fullres` of the full-size sample, for bench.inference) as gzipped tar chunks of at
    most `max_mib` each, named photos-K-of-N.tar.gz. The first chunk alone is enough for `smoke` and `bench`."""
    full_size = sorted((data / FULLRES).glob("*.jpg"))
    files = full_size[::max(1, len(full_size) // fullres)][:fullres] if fullres else []
    files += sorted((data / TRAIN).glob("*.jpg"), key=photo_order)
    if not files:
        raise SystemExit(f"no photos under {data / TRAIN}")
    chunks.mkdir(parents=True, exist_ok=True)
    for old in chunks.glob("photos-*.tar.gz"):
        old.unlink()
    limit, margin = max_mib * 2**20, 2**18  # the gzip stream holds back some output: leave room for it
    written, index = [], 0
    while index < len(files):
        path = chunks / f"photos-{len(written) + 1}.tar.gz"
        # dereference: a photo linked into the folder travels as the photo, not as a link to this machine's path
        with path.open("wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6, dereference=True) as tar:
            while index < len(files) and (raw.tell() + files[index].stat().st_size + margin < limit
                                          or not tar.getmembers()):
                tar.add(files[index], arcname=str(files[index].relative_to(data)))
                index += 1
        written.append(path)
    named = [path.rename(path.with_name(f"photos-{k}-of-{len(written)}.tar.gz")) for k, path in
             enumerate(written, 1)]
    tree = working_tree_mib() + sum(w.stat().st_size for w in WHEELS.glob("*.whl")) / 2**20
    for path in named:
        size = path.stat().st_size / 2**20
        note = "" if tree + size < CARRY_LIMIT_MIB else f"  TOO BIG: with the {tree:.1f} MiB working tree and wheels"
        print(f"{path}: {size:.1f} MiB{note}")
    print(f"{len(files)} photos in {len(named)} chunks; the working tree and {WHEELS.name}/ that travel with each "
          f"are {tree:.1f} MiB (limit {CARRY_LIMIT_MIB} MiB with the chunk)")
    return named


def working_tree_mib() -> float:
    """What is shipped besides a chunk: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file()) / 2**20


def use_site() -> None:
    """Put the wheels `setup` installed first on this process's path and its children's."""
    if SITE.is_dir():
        sys.path.insert(0, str(SITE))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))


def setup(chunks: Path, photos: Path, wheels_folder: Path = WHEELS) -> None:
    """Install the carried wheels, and unpack every chunk carried so far (a later call carries another)."""
    wheels = sorted(wheels_folder.glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)], check=True)
        print(f"installed into {SITE}: {', '.join(w.name for w in wheels)}")
    photos.mkdir(parents=True, exist_ok=True)
    done = photos / "unpacked.txt"
    for path in sorted(chunks.glob("photos-*.tar.gz")):
        with tarfile.open(path) as tar:
            tar.extractall(photos, filter="data")  # "data": no links or paths that leave the folder
        with done.open("a") as record:
            record.write(path.name + "\n")
    names = sorted(set(done.read_text().split())) if done.exists() else []
    total = names[0].split("-of-")[1].split(".")[0] if names else "?"
    print(f"chunks unpacked: {', '.join(names) or 'none'} ({len(names)} of {total}); "
          f"{len(list((photos / TRAIN).glob('*.jpg')))} training photos, "
          f"{len(list((photos / FULLRES).glob('*.jpg')))} full-size photos in {photos}")


# ---- running commands with their output kept ----

class GpuMemory:
    """The most GPU memory in use while a command runs, as nvidia-smi reports it (all processes, MiB)."""

    def __enter__(self) -> "GpuMemory":
        self.peak_mib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=10).stdout.split()
                self.peak_mib = max([self.peak_mib, *map(int, used[:1])])
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_logged(command: list[str], log: Path, timeout: float | None = None, env: dict | None = None) -> int:
    """Run a command, its output going to the console and to `log`. Returns its exit status."""
    print(f"$ {shlex.join(command)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as file:
        file.write(f"$ {shlex.join(command)}\n")
        file.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        timer = threading.Timer(timeout, process.terminate) if timeout else None  # SIGTERM: train.py saves first
        if timer:
            timer.start()
        for line in process.stdout:
            sys.stdout.write(line)
            file.write(line)
        code = process.wait()
        if timer:
            timer.cancel()
        file.write(f"exit status {code}\n")
    return code


# ---- smoke: does every CUDA path run at all ----

def check_imports() -> str:
    """Everything the GPU part runs imports without gradio (the GPU machine has none); the versions it runs on."""
    import importlib

    for module in ("catsdogs.training", "catsdogs.evaluate", "catsdogs.inference", "catsdogs.calibrate",
                   "bench.training", "bench.inference", "train"):
        importlib.import_module(module)
    if "gradio" in sys.modules:
        raise SystemExit("something on the GPU path imports gradio, which the GPU machine does not have")
    import huggingface_hub
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return (f"Python {sys.version.split()[0]}, torch {torch.__version__}, huggingface_hub "
            f"{huggingface_hub.__version__}, {gpu}")


def smoke(photos: Path, epochs: int, device: str) -> int:
    """train.py on CUDA, the same under torchrun (NCCL), evaluate and the Classifier on the GPU: each must run."""
    out = out_dir()
    log = out / "smoke.log"
    versions = check_imports()
    print(versions)
    data = str(photos / TRAIN)
    lines, failures = [f"# Smoke runs on the GPU\n\n{versions}\n"], 0
    launches = {
        "python train.py": [sys.executable, "train.py"],
        "torchrun --standalone --nproc-per-node 1 train.py": [sys.executable, "-m", "torch.distributed.run",
                                                               "--standalone", "--nproc-per-node", "1", "train.py"],
    }
    for name, launch in launches.items():
        folder = ROOT / "runs" / "gpu-smoke" / ("torchrun" if "torchrun" in name else "single")
        with GpuMemory() as memory:
            code = run_logged([*launch, "--data", data, "--device", device, "--epochs", str(epochs), "--output",
                               str(folder), "--overwrite", "--tta", "mirror", "--ema-decay", "0.99"], log)
        failures += code != 0
        backend = [line.rsplit("DDP over ", 1)[1].split(";")[0] for line in log.read_text().splitlines()
                   if "DDP over " in line and "torchrun" in name][-1:]  # the process group's, as train.py logs it
        lines.append(f"- `{name}`: exit {code}; " + describe_run(folder) + f"; GPU memory in use at most "
                     f"{memory.peak_mib} MiB (nvidia-smi)" + (f"; DDP over {backend[0]}" if backend else ""))
    weights = ROOT / "runs" / "gpu-smoke" / "single"
    code = run_logged([sys.executable, "-m", "catsdogs.evaluate", "--model", str(weights), "--data", data,
                       "--split", "validation"], log)
    failures += code != 0
    lines.append(f"- `python -m catsdogs.evaluate --split validation` on the GPU: exit {code} (its report: smoke.log)")
    code = run_logged([sys.executable, "-c", CLASSIFIER_CHECK, str(weights), str(photos / FULLRES), device], log)
    failures += code != 0
    lines.append(f"- the app's `Classifier` on {device} over the full-size photos: exit {code}")
    (out / "smoke.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


CLASSIFIER_CHECK = """
import sys, time, torch
from pathlib import Path
from catsdogs.inference import Classifier
classifier = Classifier(sys.argv[1], device=torch.device(sys.argv[3]))
photos = sorted(Path(sys.argv[2]).glob("*.jpg"))
started = time.perf_counter()
results = classifier.predict(photos)
took = time.perf_counter() - started
right = sum(r.top_class == p.name.split(".")[0] for r, p in zip(results, photos))
print(f"Classifier on {classifier.device}: {right}/{len(photos)} full-size photos right, "
      f"{took * 1000 / max(1, len(photos)):.1f} ms a photo in one call")
"""


def describe_run(folder: Path) -> str:
    """A finished (or stopped) run in one line, from its metrics.json."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "no metrics.json"
    history = metrics["history"]
    speed = max((row["images_per_s"] for row in history), default=0)
    return (f"{metrics['device']}; best validation accuracy {metrics['best_val_accuracy']:.2%} (epoch "
            f"{metrics['best_epoch']} of {metrics['epochs_completed']}); up to {speed:,.0f} training images/s")


# ---- bench: the GPU rows of docs/performance.md ----

def bench(photos: Path, seconds: int, device: str) -> int:
    out = out_dir()
    codes = [run_logged([sys.executable, "-m", "bench.inference", "--device", device, "--runs", "200",
                         "--seconds", str(seconds), "--photos", str(photos / FULLRES)], out / "bench-inference.log"),
             run_logged([sys.executable, "-m", "bench.training", "--device", device, "--seconds", str(seconds),
                         "--data", str(photos / TRAIN)], out / "bench-training.log")]
    return 1 if any(codes) else 0


# ---- sweep: recipes chosen on the validation split only ----

@dataclass(frozen=True)
class Recipe:
    name: str
    args: tuple[str, ...]  # train.py flags beyond --data, --device, --output
    alone: bool = False  # trained with nothing else on the GPU: its times are the GPU's own (the 60 s target)

    @property
    def epochs(self) -> int:
        return int(self.args[self.args.index("--epochs") + 1])

    def with_epochs(self, epochs: int) -> "Recipe":
        """The same recipe, shortened or lengthened (a dry run on the CPU: 1 epoch)."""
        at = self.args.index("--epochs") + 1
        return Recipe(self.name, (*self.args[:at], str(epochs), *self.args[at + 1:]), self.alone)


def recipe(name: str, epochs: int, alone: bool = False, **flags) -> Recipe:
    args = ["--epochs", str(epochs)]
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag.replace("--", "--no-", 1)] if value is False else [flag, str(value)]
    return Recipe(name, tuple(args), alone)


# Every recipe trains with the moving average and validates with the mirror: neither changes the training steps,
# and after each run the sweep scores its last epoch with and without each (Outcome.final), so no run is spent on
# them. In order of what a short budget should answer first: how fast 95% comes (alone on the GPU), how many
# epochs, the learning rate and batch, then one change at a time from the base recipe.
BASE = dict(batch_size=256, lr=4e-3, ema_decay=0.999, tta="mirror")
SWEEP = [
    recipe("fast-e15-b512", 15, alone=True, **{**BASE, "batch_size": 512, "lr": 8e-3, "ema_decay": 0.99}),
    recipe("e50", 50, **BASE),
    recipe("e100", 100, **BASE),
    recipe("e50-lr2e-3", 50, **{**BASE, "lr": 2e-3}),
    recipe("e50-lr8e-3", 50, **{**BASE, "lr": 8e-3}),
    recipe("e50-b512-lr8e-3", 50, **{**BASE, "batch_size": 512, "lr": 8e-3}),
    recipe("e50-b128-lr2e-3", 50, **{**BASE, "batch_size": 128, "lr": 2e-3}),
    recipe("e50-ls0", 50, **BASE, label_smoothing=0),
    recipe("e50-ls0.2", 50, **BASE, label_smoothing=0.2),
    recipe("e50-dropout0.3", 50, **BASE, dropout=0.3),
    recipe("e50-noaug", 50, **BASE, augment=False),
    recipe("e150", 150, **BASE),
]


@dataclass
class Outcome:
    recipe: Recipe
    folder: Path
    status: str  # finished, stopped (by the budget: a later sweep resumes it), not started
    metrics: dict | None
    final: dict[str, float] | None  # the last epoch's validation accuracy with and without EMA and mirror

    @property
    def accuracy(self) -> float:
        return self.metrics["best_val_accuracy"] if self.metrics else -1.0

    def row(self) -> list[str]:
        flags = shlex.join(self.recipe.args)
        if not self.metrics:
            return [self.recipe.name, flags, "-", "-", "-", "-", "-", self.status]
        history = self.metrics["history"]
        reached = next((sum(r["seconds"] for r in history[:i + 1]) for i, r in enumerate(history)
                        if r["val_accuracy"] >= 0.95), None)
        speed = sorted(r["images_per_s"] for r in history)[len(history) // 2]  # the median epoch
        final = " / ".join(f"{self.final[k]:.2%}" for k in FINAL_VARIANTS) if self.final else "-"
        return [self.recipe.name + (" (alone)" if self.recipe.alone else ""), flags, f"{self.accuracy:.2%}",
                f"{self.metrics['best_epoch']}/{self.metrics['epochs_completed']}", final,
                f"{self.metrics['training_seconds']:.0f} s, {speed:,.0f} img/s",
                "-" if reached is None else f"{reached:.0f} s", self.status]


FINAL_VARIANTS = ("last step", "last step + mirror", "EMA", "EMA + mirror")


def sweep(photos: Path, recipes: list[Recipe], budget: float, parallel: int, runs: Path, device: str) -> int:
    """Train each recipe not yet finished (resuming one a budget stopped) until `budget` seconds have passed:
    an `alone` recipe by itself, the others `parallel` at a time. Runs still going then are stopped (each saves
    its checkpoint, so a later sweep resumes it). Writes the results table, the logs and the best weights to $OUT."""
    out, deadline = out_dir(), time.monotonic() + budget
    pending = [r for r in recipes if status_of(runs / r.name, r) != "finished"]
    running: list[tuple[threading.Thread, Recipe]] = []
    while (pending or running) and time.monotonic() < deadline:
        running = [(thread, chosen) for thread, chosen in running if thread.is_alive()]
        while pending and may_start(pending[0], [chosen for _, chosen in running], parallel):
            chosen = pending.pop(0)
            thread = threading.Thread(target=train_recipe, daemon=True,
                                      args=(photos, chosen, runs / chosen.name, deadline, out, device))
            thread.start()
            running.append((thread, chosen))
        time.sleep(2)
    for thread, _ in running:  # the deadline stopped them: each saves its checkpoint and exits
        thread.join()
    outcomes = [Outcome(r, runs / r.name, status_of(runs / r.name, r), read_metrics(runs / r.name),
                        final_accuracies(runs / r.name, photos, device)) for r in recipes]
    write_results(outcomes, out, budget, parallel, photos)
    return 0


def may_start(chosen: Recipe, running: list[Recipe], parallel: int) -> bool:
    if any(r.alone for r in running):
        return False  # an alone run has the GPU to itself
    return not running if chosen.alone else len(running) < parallel


def train_recipe(photos: Path, chosen: Recipe, folder: Path, deadline: float, out: Path, device: str) -> int:
    resume = ["--resume"] if (folder / "checkpoint" / "last.safetensors").exists() else ["--overwrite"]
    return run_logged([sys.executable, "train.py", "--data", str(photos / TRAIN), "--device", device, "--output",
                       str(folder), *chosen.args, *resume], out / "sweep-logs" / f"{chosen.name}.log",
                      timeout=max(1.0, deadline - time.monotonic()))


def final_accuracies(folder: Path, photos: Path, device: str) -> dict[str, float] | None:
    """The validation accuracy of a run's last epoch: the last step's weights and their moving average, each
    alone and with the mirror; what EMA and TTA are worth, without a run of their own."""
    import torch

    from catsdogs.checkpoint import load_checkpoint
    from catsdogs.config import recorded_split
    from catsdogs.data import CLASS_NAMES
    from catsdogs.loader import PhotoLoader, find_split
    from catsdogs.model import INPUT_SIZE, CatsDogsCNN

    metrics = read_metrics(folder)
    if not metrics or not (folder / "checkpoint" / "last.safetensors").exists():
        return None
    config = metrics["config"]
    split = find_split(config["data"], *recorded_split(config), config["val_data"])
    val = PhotoLoader.load(split.val, INPUT_SIZE, torch.device(device), "validation", os.cpu_count() or 1, False,
                           config["cache"], config["cache_dir"])
    checkpoint = load_checkpoint(folder / "checkpoint" / "last.safetensors")
    ema = checkpoint["ema"] or {f"module.{k}": v for k, v in checkpoint["model"].items()}  # no EMA: the same
    weights = {"last step": checkpoint["model"],
               "EMA": {k.removeprefix("module."): v for k, v in ema.items() if k != "n_averaged"}}
    found = {}
    for name, state in weights.items():
        for tta in ("none", "mirror"):
            model = CatsDogsCNN(class_names=CLASS_NAMES, tta=tta)
            model.load_state_dict(state)
            model.to(torch.device(device), memory_format=torch.channels_last)
            logits = val.logits(model)  # as training validates
            found[name + (" + mirror" if tta == "mirror" else "")] = \
                (logits.argmax(dim=1) == val.labels).float().mean().item()
    return found


def cpu_accuracy(folder: Path, photos: Path, out: Path) -> str:
    """evaluate's accuracy line for the weights in `folder` on the validation split, computed on the CPU."""
    log = out / "sweep-logs" / "evaluate-best-on-cpu.log"
    run_logged([sys.executable, "-m", "catsdogs.evaluate", "--model", str(folder), "--data", str(photos / TRAIN),
                "--split", "validation", "--mistakes", "0"], log, env={"CUDA_VISIBLE_DEVICES": ""})
    return next((line for line in log.read_text().splitlines() if line.startswith("accuracy")), "failed (see log)")


def read_metrics(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def status_of(folder: Path, chosen: Recipe) -> str:
    from catsdogs.calibrate import MIN_PHOTOS

    metrics = read_metrics(folder)
    if metrics is None:
        return "not started"
    calibrated = "calibration" in metrics or metrics["n_val"] < MIN_PHOTOS  # the last thing a run does
    return "finished" if metrics["epochs_completed"] >= chosen.epochs and calibrated else "stopped"


def write_results(outcomes: list[Outcome], out: Path, budget: float, parallel: int, photos: Path) -> None:
    """results.md (the table, best first), results.json, the best weights as best-weights.tar.gz, the logs as
    sweep-logs.tar.gz: four files, few enough to bring back in one go."""
    ranked = sorted(outcomes, key=lambda o: o.accuracy, reverse=True)
    header = ["recipe", "train.py flags", "val accuracy (EMA + mirror, best epoch)", "best epoch / epochs run",
              "last epoch: " + " / ".join(FINAL_VARIANTS), "training time, median speed", "time to 95%", "status"]
    lines = ["# Sweep on the validation split", "",
             f"This call's budget: {budget:.0f} s; up to {parallel} runs shared the GPU at once (an \"alone\" run "
             "had it to itself), so only an alone run's times are the GPU's own. Chosen on validation accuracy only "
             "(the split train.py makes: by default a stratified 10%, seed 0).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(o.row()) + " |" for o in ranked]
    (out / "results.json").write_text(json.dumps([{"recipe": o.recipe.name, "args": list(o.recipe.args),
                                                   "status": o.status, "final": o.final, "metrics": o.metrics}
                                                  for o in ranked]) + "\n")
    best = ranked[0] if ranked and ranked[0].metrics else None
    if best:
        lines += ["", f"The best, {best.recipe.name}, as `catsdogs.evaluate` scores it on the CPU (fp32, as it will be "
                  f"checked at home; the GPU validated in bf16): {cpu_accuracy(best.folder, photos, out)}"]
        with tarfile.open(out / "best-weights.tar.gz", "w:gz") as tar:
            for file in sorted(best.folder.iterdir()):
                if file.is_file():
                    tar.add(file, arcname=f"{best.recipe.name}/{file.name}")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    logs = out / "sweep-logs"
    if logs.is_dir():  # one file for all the logs
        with tarfile.open(out / "sweep-logs.tar.gz", "w:gz") as tar:
            tar.add(logs, arcname="sweep-logs")
        for log in logs.iterdir():
            log.unlink()
        logs.rmdir()


# ---- session: the whole GPU part in one command ----

# The time-to-accuracy recipe (docs/training.md#time-to-accuracy) and the long run that continues from one machine
# to the next. Both compile (train.py's --compile auto, on CUDA) and mirror each photo in alternate epochs; neither
# keeps a moving average, which the sweep found costs accuracy after a one-cycle schedule. Both validate on the
# centred 95% of each photo and its mirror image (--crop-pct 0.95, docs/training.md#the-test-time-crop-and-zoom).
# Batches that divide the 20,700 training photos (TRAINING_PHOTOS): every batch of an epoch has one size, so each
# launch compiles the step once, not twice (a smaller last batch is a second static shape).
STARTS = dict(whiten=True, identity_start=True)  # airbench's starts: training begins to learn at the first steps
FAST = recipe("fast", 30, batch_size=460, lr=5.4e-3, tta="mirror", crop_pct=0.95, flip="alternate", **STARTS)
LONG = recipe("long", 200, batch_size=276, lr=4e-3, tta="mirror", crop_pct=0.95, flip="alternate", **STARTS)
TRAINING_PHOTOS = 20_700  # dogs-vs-cats-200/train less its validation split (10%, seed 0)
LONG_CHECKPOINT = ROOT / ".data" / "long" / "last.safetensors"  # ignored by git; carried out again with the photos
TARGET = 0.95  # the validation accuracy the fast recipe is timed to
RESULT_LIMIT_MIB = 16  # what one file brought back may hold


@dataclass(frozen=True)
class SessionPlan:
    """How long each part of `session` runs: a full one on the GPU, or a dry run of every part on a CPU."""

    bench_seconds: int  # per benchmark row
    bench_photos: int  # real photos bench.training trains on
    photo_runs: int  # one-photo calls per bench.inference row
    fast: Recipe
    long: Recipe
    reserve: float  # seconds kept at the end: the long run saving its checkpoint, the results packed

    @classmethod
    def choose(cls, dry_run: bool) -> "SessionPlan":
        if dry_run:
            return cls(1, 128, 3, FAST.with_epochs(1), LONG.with_epochs(2), reserve=20)
        return cls(5, 2048, 50, FAST, LONG, reserve=45)


PARTS = ("bench", "fast", "long")  # what `session` runs, in this order
SESSION_RUNS = ROOT / "runs" / "session"  # the fast and the long run's output folders


def session(photos: Path, device: str, seconds: float, plan: SessionPlan, parts: tuple[str, ...] = PARTS) -> int:
    """The benchmarks compiled and eager, the fast recipe's time to 95%, then the long run until `seconds` after
    the start (each of PARTS only when in `parts`). Writes session.md, the logs, the long run's checkpoint and best
    weights to $OUT. Exit status 1 when a part failed; a training run stopped by the time is not a failure."""
    deadline, out = time.monotonic() + seconds, out_dir()
    versions = check_imports()
    print(versions, flush=True)
    codes: dict[str, int] = {}
    found: list[str] = []
    if "bench" in parts:
        codes |= session_bench(photos, device, plan, out / "session-logs" / "bench.log")
    if "fast" in parts:
        codes["fast"], line = session_fast(photos, device, plan, deadline, out)
        found.append(line)
    if "long" in parts:
        codes["long"], line = session_long(photos, device, plan, deadline, out)
        found.append(line)
    lines = ["# GPU session", "", versions, "", *(f"- `{name}`: exit {code}" for name, code in codes.items()), "",
             *found, *bring_back(SESSION_RUNS / "long", out)]
    (out / "session.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    stopped = {"fast": 130, "long": 130}  # train.py stopped by the time: its last finished epoch is saved
    return 1 if any(code not in (0, stopped.get(name, 0)) for name, code in codes.items()) else 0


def session_bench(photos: Path, device: str, plan: SessionPlan, log: Path) -> dict[str, int]:
    """bench.training and bench.inference, each with its compiled rows beside the eager ones."""
    return {
        "bench.training": run_logged([sys.executable, "-m", "bench.training", "--device", device, "--compile",
                                      "--seconds", str(plan.bench_seconds), "--photos", str(plan.bench_photos),
                                      "--data", str(photos / TRAIN)], log),
        "bench.inference": run_logged([sys.executable, "-m", "bench.inference", "--device", device, "--compile",
                                       "--seconds", str(plan.bench_seconds), "--runs", str(plan.photo_runs),
                                       "--photos", str(photos / FULLRES)], log),
    }


def session_fast(photos: Path, device: str, plan: SessionPlan, deadline: float, out: Path) -> tuple[int, str]:
    """The fast recipe from scratch, with an empty compiler cache: its time to 95% includes compiling from
    nothing, as on a fresh machine."""
    folder, cache = SESSION_RUNS / "fast", SESSION_RUNS / "fresh-compiler-cache"
    shutil.rmtree(cache, ignore_errors=True)
    with GpuMemory() as memory:
        started = time.monotonic()
        code = run_logged([sys.executable, "train.py", "--data", str(photos / TRAIN), "--device", device,
                           "--output", str(folder), "--overwrite", *plan.fast.args], out / "session-logs" / "fast.log",
                          timeout=max(1.0, deadline - time.monotonic() - plan.reserve),
                          env={"TORCHINDUCTOR_CACHE_DIR": str(cache)})
        took = time.monotonic() - started
    return code, (f"- fast recipe `{shlex.join(plan.fast.args)}`: {describe_run(folder)}; {time_to_target(folder)}; "
                  f"{took:.0f} s for the whole train.py, photo decoding and validation included; GPU memory in use "
                  f"at most {memory.peak_mib} MiB (nvidia-smi)")


def session_long(photos: Path, device: str, plan: SessionPlan, deadline: float, out: Path) -> tuple[int, str]:
    """The long run, resumed from LONG_CHECKPOINT when that is here, until plan.reserve before the deadline."""
    LONG_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    resume = "--resume" if LONG_CHECKPOINT.exists() else "--overwrite"
    folder = SESSION_RUNS / "long"
    code = run_logged([sys.executable, "train.py", "--data", str(photos / TRAIN), "--device", device,
                       "--output", str(folder), "--checkpoint", str(LONG_CHECKPOINT), *plan.long.args, resume],
                      out / "session-logs" / "long.log", timeout=max(1.0, deadline - time.monotonic() - plan.reserve))
    return code, f"- long run `{shlex.join(plan.long.args)}` ({resume}): {describe_run(folder)}"


def time_to_target(folder: Path) -> str:
    """Seconds from the first step to the end of the first epoch that validated at TARGET: compiling and the
    training epochs (validation after each epoch is not counted; train.py logs it apart)."""
    metrics = read_metrics(folder)
    if not metrics:
        return "no metrics.json"
    compiling, seconds = metrics.get("compile_seconds") or 0.0, 0.0
    for row in metrics["history"]:
        seconds += row["seconds"]
        if row["val_accuracy"] >= TARGET:
            return (f"{TARGET:.0%} after epoch {row['epoch']}: {compiling + seconds:.1f} s from the first step "
                    f"({compiling:.1f} s compiling + {seconds:.1f} s of epochs)")
    return f"{TARGET:.0%} not reached in {len(metrics['history'])} epochs ({compiling:.1f} s compiling)"


def bring_back(long_run: Path, out: Path) -> list[str]:
    """The long run's checkpoint (to carry out again next time) and best weights, and the logs, into $OUT; each
    file under RESULT_LIMIT_MIB. Returns the lines session.md says about them."""
    lines = []
    if LONG_CHECKPOINT.exists():
        shutil.copy2(LONG_CHECKPOINT, out / "long-checkpoint.safetensors")
    if (long_run / "model.safetensors").exists():
        with tarfile.open(out / "long-weights.tar.gz", "w:gz") as tar:
            for file in sorted(p for p in long_run.iterdir() if p.is_file()):
                tar.add(file, arcname=f"long/{file.name}")
    logs = out / "session-logs"
    with tarfile.open(out / "session-logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="session-logs")
    shutil.rmtree(logs)
    for file in sorted(out.iterdir()):
        size = file.stat().st_size / 2**20
        lines.append(f"- {file.name}: {size:.1f} MiB" + ("  TOO BIG to bring back" if size > RESULT_LIMIT_MIB else ""))
    return ["", "Files:", *lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    step = steps.add_parser("pack", help="here: the photos as chunks small enough to ship one at a time")
    step.add_argument("--data", type=Path, default=SHARED_DATA)
    step.add_argument("--max-mib", type=float, default=56.0, help="per chunk (default 56: 64 less the working tree)")
    step.add_argument("--fullres", type=int, default=50, help="full-size photos to include for bench.inference")
    step.add_argument("--no-wheels", dest="wheels", action="store_false", help="do not download the wheels")
    step = steps.add_parser("setup", help="there: install the carried wheels, unpack the chunks carried so far")
    step = steps.add_parser("smoke", help="there: train.py on CUDA, torchrun (NCCL), evaluate, the Classifier")
    step.add_argument("--epochs", type=int, default=2)
    step = steps.add_parser("bench", help="there: bench.inference and bench.training on CUDA")
    step.add_argument("--seconds", type=int, default=15, help="per row")
    step = steps.add_parser("session", help="there: the benchmarks compiled and eager, the fast recipe's time to "
                            "95%%, then the long run until --seconds have passed (resumed from .data/long/)")
    step.add_argument("--seconds", type=float, default=480, help="for the whole session (default 480)")
    step.add_argument("--dry-run", action="store_true", help="every part, briefly: to check it on a CPU")
    step.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                      help="which parts to run (default all; e.g. --parts long to go on with the long run only)")
    step = steps.add_parser("sweep", help="there: train the recipes until --budget; run again to continue")
    step.add_argument("--budget", type=float, default=540, help="seconds for this call's share of the sweep")
    step.add_argument("--parallel", type=int, default=2, help="runs sharing the GPU at once")
    step.add_argument("--only", nargs="+", help="recipe names to run (default: all, in order)")
    step.add_argument("--runs", type=Path, default=ROOT / "runs" / "sweep", help="the runs' output folders")
    step.add_argument("--epochs", type=int, help="every recipe with this many epochs instead (a dry run: 1)")
    for name, step in steps.choices.items():
        if name != "pack":
            step.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run here")
        step.add_argument("--photos", type=Path, default=PHOTOS, help="the unpacked photos (default .data/photos)")
        step.add_argument("--chunks", type=Path, default=CHUNKS, help="the chunks (default .data/chunks)")
    args = parser.parse_args(argv)
    if args.step == "pack":
        if args.wheels:
            download_wheels(WHEELS)
        pack(args.data, args.chunks, args.max_mib, args.fullres)
        return 0
    use_site()
    if args.step == "setup":
        setup(args.chunks, args.photos)
        return 0
    if args.step == "smoke":
        return smoke(args.photos, args.epochs, args.device)
    if args.step == "bench":
        return bench(args.photos, args.seconds, args.device)
    if args.step == "session":
        return session(args.photos, args.device, args.seconds, SessionPlan.choose(args.dry_run), tuple(args.parts))
    known = {r.name: r for r in SWEEP}
    unknown = [name for name in args.only or [] if name not in known]
    if unknown:
        parser.error(f"no recipe {', '.join(unknown)}; the recipes: {', '.join(known)}")
    chosen = [known[name] for name in args.only] if args.only else SWEEP
    if args.epochs:
        chosen = [r.with_epochs(args.epochs) for r in chosen]
    return sweep(args.photos, chosen, args.budget, args.parallel, args.runs, args.device)


if __name__ == "__main__":
    sys.exit(main())
