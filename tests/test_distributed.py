"""`torchrun` with DistributedDataParallel: 2 CPU processes with gloo on 127.0.0.1."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EASY_TASK, OUTPUT_FILES, ROOT, assert_same_training

from catsdogs.checkpoint import load_checkpoint

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def env(**changes: str) -> dict[str, str]:
    """The tests' environment for a launch: a process that aborts in C++ code (SIGABRT, SIGSEGV) prints its Python
    threads' stacks, which the failure's message then shows."""
    return {**os.environ, "PYTHONFAULTHANDLER": "1", **changes}


# The moving average and the mirror on: each process keeps its own average, which must stay in step and resume exactly.
# Two epochs: a kill after the first one's checkpoint leaves one to resume.
DDP_RECIPE = {**EASY_TASK, "epochs": 2, "ema_decay": 0.5, "tta": "mirror"}


def train_args(data: Path, out: Path, **recipe) -> list[str]:
    args = ["--data", str(data), "--output", str(out / "weights"), "--checkpoint", str(out / "ck" / "last.safetensors")]
    for key, value in {**DDP_RECIPE, **recipe}.items():
        args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(easy_photos, tmp_path_factory):
    """One uninterrupted 2-process run of the easy task, recorded per process by tests/ddp_probe.py, launched as
    docs/training.md launches one on two machines: two torchrun agents ("machines", one process each) meeting at a
    c10d rendezvous, here on 127.0.0.1. One thread per process, as torchrun gives two processes on one machine, so
    that the run is the one `torchrun --nproc-per-node 2` makes, bit for bit."""
    data, _ = easy_photos
    records = tmp_path_factory.mktemp("ddp")
    out = records / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
              "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "test",
              "tests/ddp_probe.py", str(records), *train_args(data, out)]
    agents = [subprocess.Popen(launch, cwd=ROOT, env=env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [agent.communicate(timeout=300) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    return records, out, "".join(stdout for stdout, _ in outputs)


def test_two_processes_train_in_sync_on_disjoint_shards(ddp_run):
    records_dir, out, stdout = ddp_run
    records = [json.loads((records_dir / f"rank{r}.json").read_text()) for r in (0, 1)]  # both ranks ran

    metrics = json.loads((out / "weights" / "metrics.json").read_text())
    n_train = metrics["n_train"]
    assert n_train == 60 and "x 2 processes" in metrics["device"] and "--nnodes 2" in metrics["command"]
    for epoch in ("1", "2"):
        first, second = (set(record["shards"][epoch]) for record in records)
        assert len(first) == len(second) == n_train // 2
        assert not first & second and first | second == set(range(n_train))
    assert records[0]["shards"]["1"] != records[0]["shards"]["2"]  # reshuffled every epoch
    assert records[0]["parameters_sha256"] == records[1]["parameters_sha256"]

    # Only the first process wrote files: one output folder, one checkpoint, one report.
    assert {p.name for p in (out / "weights").iterdir()} == OUTPUT_FILES
    assert [p.name for p in (out / "ck").iterdir()] == ["last.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == ["ck", "weights"]
    assert stdout.count("best validation accuracy") == 1

    # The same global batches, but each process augments with its own random stream, so the weights are not the
    # one-process run's; the easy task is learnt all the same: 20 of 20.
    assert metrics["best_val_accuracy"] == 1.0


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def rank_pid(torchrun_pid: int, rank: int) -> int | None:
    for pid in children_of(torchrun_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_killing_one_process_fails_the_run_and_resume_ends_exactly_where_the_uninterrupted_run_ends(
        easy_photos, ddp_run, tmp_path):
    data, _ = easy_photos
    args = train_args(data, tmp_path)  # the same run as ddp_run's
    checkpoint = tmp_path / "ck" / "last.safetensors"
    run = subprocess.Popen([*TORCHRUN, "train.py", *args], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    victim = rank_pid(run.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    _, stderr = run.communicate(timeout=120)

    assert run.returncode != 0
    completed = load_checkpoint(checkpoint)["epoch"]
    assert completed == 1
    assert f"{completed} finished epochs are saved" in stderr
    assert f"resume with: torchrun --nproc-per-node 2 train.py {' '.join(args)} --resume" in stderr

    resumed = subprocess.run([*TORCHRUN, "train.py", *args, "--resume"], cwd=ROOT, env=env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-8000:]
    assert f"after epoch {completed}" in resumed.stdout
    history = json.loads((tmp_path / "weights" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert_same_training(tmp_path, ddp_run[1])  # bit for bit, in both processes' random streams


def test_one_process_under_torchrun_is_ddp_and_trains_exactly_as_a_plain_run(easy_photos, tmp_path):
    """On a one-GPU machine `torchrun --nproc-per-node 1` is what proves the NCCL path: it must be the distributed
    path (a process group, DDP, the all-reduces), and that must change nothing, the GPU session's starts included."""
    data, _ = easy_photos
    launches = {"torchrun": [*TORCHRUN[:-1], "1", "train.py"], "plain": [sys.executable, "train.py"]}
    starts = {"epochs": 1, "whiten": True, "identity_start": True}
    runs = {name: subprocess.Popen([*launch, *train_args(data, tmp_path / name, **starts)], cwd=ROOT, env=env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, launch in launches.items()}  # side by side
    stdout = {}
    for name, run in runs.items():
        stdout[name], stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-3000:]
    assert "1 processes of 16 photos per step, DDP over gloo" in stdout["torchrun"]
    assert "DDP" not in stdout["plain"]
    assert_same_training(tmp_path / "torchrun", tmp_path / "plain")
    config = json.loads((tmp_path / "torchrun" / "weights" / "metrics.json").read_text())["config"]
    assert config["whiten"] and config["identity_start"]


def test_a_refused_output_stops_every_process_at_once(easy_photos, tmp_path):
    """Under torchrun every process checks the output and the first one says why it refuses, once, even when the
    others get there first (the first is held back 2 s): their refusal ends the whole launch."""
    data, _ = easy_photos
    out = tmp_path / "run"
    (out / "weights").mkdir(parents=True)
    (out / "weights" / "model.safetensors").write_bytes(b"an earlier run's weights")
    started = time.monotonic()
    held_back = env(PYTHONPATH=str(ROOT / "tests" / "slow_first_process"))  # its sitecustomize.py
    result = subprocess.run([*TORCHRUN, "train.py", *train_args(data, out)], cwd=ROOT, env=held_back,
                            capture_output=True, text=True, timeout=120)
    # Under torchrun's 30 s grace period: the others stop on their own, not when torchrun kills them (~36 s).
    assert result.returncode != 0 and time.monotonic() - started < 25
    assert result.stderr.count("is from an earlier run and this run would replace it") == 1
    assert (out / "weights" / "model.safetensors").read_bytes() == b"an earlier run's weights"
    assert "epoch" not in result.stdout
