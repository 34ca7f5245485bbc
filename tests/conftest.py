"""Shared test set-up: point huggingface_hub at a local test Hub (tests/hub_server.py).

huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_DISABLE_XET... once, when it is
first imported, so they are set here, before anything imports it. Subprocesses that
the tests start (e.g. ``python train.py --push``) inherit os.environ and so talk to
the same local Hub, on the same port.
"""

import atexit
import os
import shutil
import socket
import tempfile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = _free_port()
HUB_URL = f"http://127.0.0.1:{PORT}"
HF_HOME = tempfile.mkdtemp(prefix="test-hf-home-")  # no real token file, no real cache
atexit.register(shutil.rmtree, HF_HOME, ignore_errors=True)
CACHE_DIR = tempfile.mkdtemp(prefix="test-photo-cache-")  # the decoded-photo cache: never the real ~/.cache
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
             "HF_XET_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING",
             "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
    os.environ.pop(_var, None)
os.environ.update(
    HF_ENDPOINT=HUB_URL,
    HF_HOME=HF_HOME,
    HF_HUB_DISABLE_XET="1",  # upload/download plain files; with Xet the client wants a Xet server
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    HF_HUB_DISABLE_UPDATE_CHECK="1",
    CATSDOGS_CACHE_DIR=CACHE_DIR,  # subprocesses (train.py, torchrun) inherit it
    # Two test processes share the cores (pyproject.toml: -n 2): one thread each, and in what they start, rather
    # than PyTorch's one per core in every process, whose waiting threads spin on cores the others need.
    OMP_NUM_THREADS="1",
)
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_var, "").split(",") if h]
    os.environ[_var] = ",".join(dict.fromkeys(_hosts + ["127.0.0.1", "localhost"]))

# Only now is it safe to import things that may import huggingface_hub.
import json  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from catsdogs import allocator  # noqa: E402  (imports nothing heavy)


def pytest_configure(config):
    """The test processes train and score in-process too: on the allocator train.py restarts itself under
    (jemalloc, when the system has it), for the same reason (docs/performance.md: the system's malloc page-faults
    every step's activations in again). Here, after the conftests have loaded, pytest's output capture is
    suspended, so the restarted pytest writes to the terminal; xdist's workers start later and inherit the preload."""
    allocator.use_jemalloc()


@pytest.fixture(scope="session", autouse=True)
def _programs_start_on_their_own_allocator():
    """What the tests start (train.py, app.py, Chromium) starts as it would for a user: without the preload,
    train.py restarts itself under jemalloc and the app stays on the system's malloc."""
    if os.environ.get(allocator.SWITCH) == "jemalloc":  # set by the restart above, with the two below
        del os.environ[allocator.SWITCH]
        library = allocator.find_jemalloc()
        preload = [entry for entry in os.environ.pop("LD_PRELOAD", "").split(":") if entry and entry != library]
        if preload:
            os.environ["LD_PRELOAD"] = ":".join(preload)
        if os.environ.get("MALLOC_CONF") == allocator.KEEP_FREED_PAGES:
            del os.environ["MALLOC_CONF"]
    yield


@pytest.fixture
def train_in_process(capsys):
    """train.py's main in this process: (exit status, stdout, stderr), for runs whose own process is not what a
    test checks (a subprocess spends seconds importing PyTorch): refusals, a push, a rerun. What a user's process
    does (the allocator restart, a kill, torchrun) is tested on the subprocesses users start."""
    sigterm = signal.getsignal(signal.SIGTERM)  # main() makes a kill save like Ctrl-C does

    def run(*args: str) -> tuple[int, str, str]:
        from train import main

        capsys.readouterr()
        status = main(list(args))
        return status, *capsys.readouterr()
    yield run
    signal.signal(signal.SIGTERM, sigterm)


WRITE_TOKEN = "hf_test_write"
READ_TOKEN = "hf_test_read"
BAD_TOKEN = "hf_test_unknown"
USER = "tester"
HUB_SERVER = Path(__file__).with_name("hub_server.py")


class Hub:
    """A running tests/hub_server.py subprocess on HUB_URL, with its repos under `root`."""

    url = HUB_URL
    write_token = WRITE_TOKEN
    read_token = READ_TOKEN
    user = USER

    def __init__(self, root: Path, log_path: Path):
        self.root, self.log_path, self.proc = Path(root), Path(log_path), None

    def start(self, timeout: float = 10.0) -> "Hub":
        """Start the server (again, on the same root and port) and wait for its READY line."""
        self.kill()
        cmd = [sys.executable, str(HUB_SERVER), "--port", str(PORT), "--root", str(self.root),
               "--write-token", WRITE_TOKEN, "--read-token", READ_TOKEN, "--user", USER]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.proc.stdout], [], [], 0.05)[0]:
                line = self.proc.stdout.readline().decode()
                if line.strip() == f"READY {HUB_URL}":
                    return self
                if not line:  # EOF: the server died
                    break
        self.kill()
        pytest.fail(f"test Hub did not start on {HUB_URL}:\n{self.log()}", pytrace=False)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_dead(self, timeout: float = 5.0) -> int:
        """Wait for the server to exit on its own (e.g. after die_on_next_commit); its exit code."""
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Kill the server (SIGKILL, by PID) and reap it; no-op when it is not running."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None

    def die_on_next_commit(self) -> None:
        """The next commit request makes the server exit without answering."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.open(urllib.request.Request(f"{HUB_URL}/_admin/die-on-next-commit", b"", method="POST"), timeout=5)

    def repo_dir(self, repo_id: str) -> Path:
        """Folder with the current files of `repo_id` on main."""
        return self.root / "models" / repo_id

    def log(self) -> str:
        """The server's request log and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fresh local Hub for this test, plus a fresh huggingface_hub download cache.

    The cache is per test (HF_HUB_CACHE for subprocesses, constants.HF_HUB_CACHE in
    this process) so a file cached by one test never stands in for the Hub in another.
    """
    from huggingface_hub import constants

    assert constants.ENDPOINT == HUB_URL, "huggingface_hub was imported before tests/conftest.py set HF_ENDPOINT"
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    server = Hub(tmp_path / "hub", tmp_path / "hub.log").start()
    yield server
    server.kill()


def running_in_ci() -> bool:
    """True when the CI variable holds one of the usual truthy values (true, 1, yes, on; any case)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes", "on"}


# Under CI a skipped test fails the run, unless it is listed here (node id, or a module or test name that the node
# id starts with) with the reason why skipping it there is fine. Nothing may skip in CI today.
ALLOWED_SKIPS_IN_CI: dict[str, str] = {}


def _allowed_in_ci(nodeid: str) -> bool:
    return any(nodeid == key or nodeid.startswith((key + "::", key + "[")) for key in ALLOWED_SKIPS_IN_CI)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail_skip_under_ci(report) -> None:
    """Turn a skipped report into a failed one under CI, unless ALLOWED_SKIPS_IN_CI lists it."""
    if report.skipped and not hasattr(report, "wasxfail") and running_in_ci() and not _allowed_in_ci(report.nodeid):
        report.outcome = "failed"
        report.longrepr = (f"{_skip_reason(report)}\n-> skipped under CI={os.environ['CI']}: a skip fails the run in "
                           "CI unless tests/conftest.py lists it in ALLOWED_SKIPS_IN_CI with its reason")


# Test files that share a session fixture which takes long to build, each set run whole by one test process, which
# builds it once: the running app (`app`) and the short training run (`trained`). A file missing here still passes:
# the other process builds the fixture again.
SHARING = {"the app": {"test_app.py", "test_browser.py", "test_page.py", "test_page_access.py", "test_page_flow.py",
                     "test_page_layout.py"},
           "the training run": {"test_training.py", "test_evaluate.py", "test_hub_data.py"}}
# What takes longest, longest first: handed out first, so that the two test processes end together rather than one
# waiting for the other's last long file. The rest follow by name.
LONGEST_FIRST = ["the training run", "the app", "test_distributed.py", "test_calibration.py"]


def work_unit(file: str) -> str:
    """What one test process runs whole: a set of SHARING, or a file."""
    name = Path(file).name
    return next((unit for unit, files in SHARING.items() if name in files), file)


# The session fixture each set of SHARING is there to build once: a file that uses it belongs to that set.
BUILT_ONCE = {"app": "the app", "trained": "the training run"}


def pytest_collection_modifyitems(items):
    """The tests in the order their work units are handed out (pyproject.toml: --no-loadscope-reorder keeps it),
    after checking that every file using a fixture of BUILT_ONCE is in its set (else a second process builds it)."""
    for item in items:
        for fixture, unit in BUILT_ONCE.items():
            if fixture in getattr(item, "fixturenames", ()) and work_unit(item.path.name) != unit:
                raise pytest.UsageError(f"{item.path.name} uses the {fixture!r} fixture: add it to SHARING[{unit!r}] "
                                        "in tests/conftest.py, so that one test process builds it for every file")
    def rank(item) -> tuple[int, str]:
        unit = work_unit(item.path.name)
        return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST), unit
    items.sort(key=rank)  # stable: within a unit, collection order


def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile (pyproject.toml), with each set of SHARING taken as one file."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Sharing(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid.split("::", 1)[0])
    return Sharing(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_skip_under_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield  # a module-level skip (e.g. pytest.importorskip at import) is a skipped collection
    _fail_skip_under_ci(report)
    return report


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FULL_SIZE = "dogs-vs-cats-fullres-sample"

# Photos of ../shared/data/dogs-vs-cats-fullres-sample that the shipped weights get right with a clear margin, for
# tests that assert the right class through every user path. Chosen by running catsdogs.inference.Classifier (fp32,
# CPU) on all 200 photos: the four most certain of each class whose probability also stays >= 0.96 on the fake
# webcam's frame of them (resized to 640x480, 4:2:0 chroma, mirrored). The figure is the class probability the
# shipped weights give the photo.
CLEAR_PHOTOS = {
    "cat.85.jpg": ("cat", 0.991), "cat.77.jpg": ("cat", 0.991), "cat.82.jpg": ("cat", 0.991),
    "cat.9.jpg": ("cat", 0.991), "dog.79.jpg": ("dog", 0.992), "dog.89.jpg": ("dog", 0.991),
    "dog.94.jpg": ("dog", 0.989), "dog.37.jpg": ("dog", 0.990),
}
SURE = 0.9  # the tests ask for the right class with at least this probability
# Random weights answer ~0.5 for everything and swapped class names answer the other class: both fail these tests.


def clear_photos(shared_data: Path, label: str | None = None) -> list[Path]:
    """The CLEAR_PHOTOS of one class (or of both), as paths."""
    return [shared_data / FULL_SIZE / name for name, (true, _) in CLEAR_PHOTOS.items() if label in (None, true)]


def true_class(photo: Path) -> str:
    return CLEAR_PHOTOS[Path(photo).name][0]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real photos in ../shared/data; skipped where they are absent (a failure under CI, like every skip)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the real photos are not at {SHARED_DATA} (see README: Set-up)")
    return SHARED_DATA


ROOT = Path(__file__).resolve().parents[1]
OUTPUT_FILES = {"model.safetensors", "config.json", "README.md", "metrics.json",
                "training_curves.png", "confusion_matrix.png"}
EASY_TASK = dict(val_fraction=0.25, epochs=3, batch_size=16, lr=1e-3,  # learnt in 1-2 epochs
                 memory_format="channels_last")  # runs compared bit for bit must not measure their way apart


@pytest.fixture(scope="session")
def easy_photos(tmp_path_factory) -> tuple[Path, list[Path]]:
    """40 generated photos per class (warm cats, cool dogs) plus three unreadable files."""
    from imagegen import write_bad_files, write_kaggle_folder

    data = write_kaggle_folder(tmp_path_factory.mktemp("easy") / "photos", per_class=40)
    return data, write_bad_files(data)


@pytest.fixture(scope="session")
def trained(easy_photos, tmp_path_factory):
    """One short real single-process training run on the easy task, shared by several tests."""
    from catsdogs.config import TrainConfig
    from catsdogs.training import train

    data, bad = easy_photos
    root = tmp_path_factory.mktemp("trained")
    config = TrainConfig(data=str(data), output=str(root / "weights"), checkpoint=str(root / "ck" / "last.safetensors"),
                         **EASY_TASK)
    return config, train(config, command="python train.py --test").summary, bad


def assert_same_training(run: Path, reference: Path) -> None:
    """Two training runs (each a folder with ck/last.safetensors and weights/) ended bit-identical: the checkpoint's
    last and best weights, the output's model.safetensors, and every per-epoch figure but the timings."""
    import torch
    from safetensors.torch import load_file

    from catsdogs.checkpoint import load_checkpoint

    def assert_same(a: dict, b: dict, what: str) -> None:
        assert a.keys() == b.keys()
        differing = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differing, f"{what} differ in {len(differing)} of {len(a)} tensors, e.g. {differing[:3]}"

    ours, theirs = (load_checkpoint(folder / "ck" / "last.safetensors") for folder in (run, reference))
    assert (ours["epoch"], ours["best"]["epoch"]) == (theirs["epoch"], theirs["best"]["epoch"])
    assert_same(ours["model"], theirs["model"], "the checkpoint's last weights")
    assert_same(ours["best"]["model"], theirs["best"]["model"], "the checkpoint's best weights")
    assert_same(*(load_file(folder / "weights" / "model.safetensors") for folder in (run, reference)),
                "weights/model.safetensors")
    if ours["ema"] or theirs["ema"]:
        assert_same(ours["ema"], theirs["ema"], "the checkpoint's moving average of the weights")
    timings = {"seconds", "images_per_s"}
    assert [{k: v for k, v in row.items() if k not in timings} for row in ours["history"]] == [
        {k: v for k, v in row.items() if k not in timings} for row in theirs["history"]]


class App:
    """`python app.py` running as a subprocess on a free loopback port, as a user would start it."""

    def __init__(self, *args: str, env: dict | None = None, cwd: Path = ROOT):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_file = tempfile.NamedTemporaryFile(prefix="app-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(ROOT / "app.py"), "--port", str(self.port), *args], cwd=cwd,
            env={**os.environ, **(env or {})}, stdout=self.log_file, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> "App":
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"app.py exited with {self.proc.returncode}:\n{self.log()}", pytrace=False)
            try:
                opener.open(self.url + "config", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"app.py did not answer on {self.url} in {timeout:.0f}s:\n{self.log()}", pytrace=False)

    def config(self) -> dict:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return json.loads(opener.open(self.url + "config", timeout=10).read())

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        Path(self.log_file.name).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def shipped_weights() -> Path:
    weights = ROOT / "weights"
    if not (weights / "model.safetensors").is_file():
        pytest.fail("the shipped weights/ are missing: the app tests need them", pytrace=False)
    return weights


LINK_SECONDS = 10


@pytest.fixture(scope="session")
def app(shipped_weights):
    """The demo on the shipped weights, started once for the client and browser tests; told to fetch linked photos
    from 127.0.0.0/8 too, where tests/link_site.py serves them (public addresses only, by default), within
    LINK_SECONDS in all (20 s by default): the slow-link test waits that out."""
    server = App("--allow-links-from", "127.0.0.0/8", "--link-seconds", str(LINK_SECONDS)).wait_ready()
    yield server
    server.stop()
