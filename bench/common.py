"""What every benchmark prints beside its figures: the hardware, the versions and the command."""

import json
import os
import platform
import shlex
import sys

import torch


def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": "python " + shlex.join(sys.argv),
    }


def report(title: str, columns: list[str], rows: list[list], extra: dict | None = None) -> None:
    """Print the figures as a Markdown table, then everything as one JSON line."""
    env = environment()
    print(f"## {title}\n")
    for key, value in env.items():
        print(f"- {key}: {value}")
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row) + " |")
    print("\nJSON " + json.dumps({"title": title, **env, "rows": [dict(zip(columns, r)) for r in rows],
                                  **(extra or {})}))
