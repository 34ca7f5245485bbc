"""How long the app and the command-line tools take to start: wall and CPU seconds of a fresh process.

    python -m bench.startup --runs 5
    python -m bench.startup --runs 5 --compare OTHER_CHECKOUT   # another checkout, measured in turn with this one

Each run starts a new Python process: `python app.py` until its /config answers, and `python train.py --help`,
`python -m catsdogs.evaluate --help` until they exit. Prints the median of the runs per program and checkout.
"""

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.app_load import start_app
from bench.common import report

ROOT = Path(__file__).resolve().parents[1]
HELP_COMMANDS = {"train.py --help": ["train.py", "--help"], "catsdogs.evaluate --help": ["-m", "catsdogs.evaluate",
                                                                                           "--help"]}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_once(program: str, checkout: Path) -> tuple[float, float]:
    """One fresh start of `program` in `checkout`: (wall seconds, CPU seconds)."""
    cpu, started = children_cpu(), time.perf_counter()
    if program == "app.py":
        app, _ = start_app(checkout / "app.py", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        app.kill()
        app.wait()
    else:
        subprocess.run([sys.executable, *HELP_COMMANDS[program]], cwd=checkout, check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
    return wall, children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="starts of each program per checkout")
    parser.add_argument("--compare", type=Path, help="another checkout, measured in turn with this one")
    args = parser.parse_args()
    checkouts = [ROOT, *([args.compare.resolve()] if args.compare else [])]
    programs = ["app.py", *HELP_COMMANDS]
    times = {(program, checkout): [] for program in programs for checkout in checkouts}
    for _ in range(args.runs):  # interleaved, so a burst of load elsewhere hits every program and checkout
        for key in times:
            times[key].append(start_once(*key))
    rows = [[program, "this" if checkout == ROOT else str(checkout),
             statistics.median(wall for wall, _ in runs), statistics.median(cpu for _, cpu in runs)]
            for (program, checkout), runs in times.items()]
    report(f"Start-up, median of {args.runs} fresh processes", ["program", "checkout", "wall s", "CPU s"], rows)


if __name__ == "__main__":
    main()
