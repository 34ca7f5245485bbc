"""Train the documented cat-vs-dog CNN on your photos, save safetensors weights, optionally push them to the Hub.

    python train.py --data ~/dogs-vs-cats/train
    python train.py --data ~/dogs-vs-cats/train --push --repo-id you/catsdogs
    python train.py --data ~/dogs-vs-cats/train --resume      # after Ctrl-C or a crash
    python train.py --data ~/my-pets --init-from weights --epochs 3 --lr 0.0002 --tta mirror --crop-pct 0.95
    torchrun --nproc-per-node 4 train.py --data ~/dogs-vs-cats/train --batch-size 256   # 4 GPUs

The seed project's recipe:
    python train.py --data PATH --epochs 40 --batch-size 20 --lr 0.001 --optimizer adam \\
        --schedule constant --weight-decay 0 --label-smoothing 0 --no-augment
"""

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # here, before PyTorch loads: the restart under jemalloc then costs nothing
    from catsdogs.allocator import use_jemalloc

    use_jemalloc()

from catsdogs.checkpoint import CheckpointError  # noqa: E402
from catsdogs.config import TrainConfig, add_arguments  # noqa: E402
from catsdogs.data import DataError  # noqa: E402
from catsdogs.device import DeviceError, Ranks  # noqa: E402
from catsdogs.export import ExportError, export_folder  # noqa: E402
from catsdogs.hub import HubError, check_write_access, push_outputs  # noqa: E402
from catsdogs.training import OutputError, TrainingInterrupted, train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)  # one flag per TrainConfig setting
    args = parser.parse_args(argv)
    try:
        TrainConfig.from_args(args)  # settings that are wrong together or out of range, said before anything runs
    except ValueError as error:
        parser.error(str(error))
    return args


def launch_command(argv: list[str]) -> str:
    """How this run was started, as a person would type it again."""
    if "LOCAL_WORLD_SIZE" in os.environ:  # started by torchrun; its own multi-node flags are not visible here
        nodes = int(os.environ["WORLD_SIZE"]) // int(os.environ["LOCAL_WORLD_SIZE"])
        launcher = f"torchrun --nproc-per-node {os.environ['LOCAL_WORLD_SIZE']}"
        return f"{launcher}{' --nnodes ' + str(nodes) + ' ...' if nodes > 1 else ''} train.py " + shlex.join(argv)
    return "python train.py " + shlex.join(argv)


MAIN_PROCESS_GRACE = 10  # seconds the other processes of a torchrun launch give the main one to say why they stop


def wait_for_the_main_process() -> None:
    """Under torchrun every process meets the same refusal and the main one says why; the others wait until it has:
    one exiting first would make torchrun stop the main process before it said anything. torchrun stops the waiting
    processes (SIGTERM, a KeyboardInterrupt here) once the main one has exited."""
    try:
        time.sleep(MAIN_PROCESS_GRACE)
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = launch_command(argv)
    config = TrainConfig.from_args(args)
    main_process = Ranks.from_env().is_main  # under torchrun, only the first process talks and pushes
    say = print if main_process else (lambda *a, **k: None)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill saves like Ctrl-C does
    try:
        if config.push:
            user = check_write_access(config.repo_id)
            say(f"Hub: logged in as {user}; will push to {config.repo_id} after training")
        summary = train(config, command).summary
    except (DataError, DeviceError, CheckpointError, HubError, OutputError) as error:
        if main_process:
            print(f"error: {error}", file=sys.stderr)
        else:
            wait_for_the_main_process()
        return 2
    except TrainingInterrupted as stop:
        if stop.completed == 0:
            say(f"\n{stop.reason} in epoch 1, before any epoch finished: nothing was saved.", file=sys.stderr)
            return stop.status
        resume = command if "--resume" in argv else command + " --resume"
        weights = f", the best weights so far in {config.output}/" if os.path.exists(
            os.path.join(config.output, "model.safetensors")) else ""
        say(f"\n{stop.reason} in epoch {stop.epoch}: {stop.completed} finished epochs are saved in "
            f"{config.checkpoint}{weights}.\nresume with: {resume}", file=sys.stderr)
        return stop.status
    except KeyboardInterrupt:
        say("\ninterrupted before training started: nothing was saved.", file=sys.stderr)
        return 130
    say(f"best validation accuracy {summary['best_val_accuracy']:.2%} (epoch {summary['best_epoch']}); "
        f"weights in {config.output}/")
    if summary.get("start_val_accuracy", -1) >= summary["best_val_accuracy"]:
        say(f"no epoch beat the starting weights (--init-from {config.init_from}: "
            f"{summary['start_val_accuracy']:.2%} before training): they are the better choice; a lower --lr or more "
            "photos may do better")
    output = shlex.quote(config.output)
    say(f"try them: python app.py --model {output}\n"
        f"          python -m catsdogs.predict PHOTOS_OR_FOLDERS --model {output}")
    if config.onnx and main_process:
        try:
            path, _ = export_folder(Path(config.output))
        except (ExportError, OSError) as error:  # a WriteError says what could not be written
            print(f"error: {error}; the weights are whole in {config.output}/", file=sys.stderr)
            return 1
        print(f"wrote {path}, for onnxruntime")
    if config.push and main_process:
        try:
            url = push_outputs(config.output, config.repo_id, private=config.private)
        except HubError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"pushed to {config.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
