"""Which memory layout the network runs in: measured on the machine it runs on, for training and for predictions.

channels_last (NHWC) is the usual winner on GPUs and on AVX512 CPUs, but not everywhere: on an AVX2-only CPU,
oneDNN trains 1.5x slower in it than in the plain contiguous (NCHW) layout (measured: docs/performance.md). So, the way
cuDNN's benchmark mode picks kernels, `choose_layout` times a few steps of each candidate at start, interleaved,
and keeps channels_last unless NCHW is faster by a clear margin, so that noise does not flip the choice.
It measures at every start rather than caching a choice per CPU: it costs seconds (a fraction of one training
epoch, well under a second for one photo), and a fresh measurement cannot go stale when PyTorch, oneDNN, the
allocator, the thread count or oneDNN's ISA cap change.
"""

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

DEFAULT_ROUNDS = 3  # timed steps per candidate, interleaved; the fastest of each counts
MARGIN = 1.05  # NCHW must be this much faster to replace the default, so that timing noise never flips it


class Layout(enum.Enum):
    CHANNELS_LAST = "channels_last"
    CONTIGUOUS = "contiguous"  # NCHW

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self is Layout.CHANNELS_LAST else torch.contiguous_format

    @property
    def label(self) -> str:
        return "channels_last" if self is Layout.CHANNELS_LAST else "contiguous (NCHW)"


DEFAULT = Layout.CHANNELS_LAST
CHOICES = ("auto", *(layout.value for layout in Layout))  # what --memory-format accepts


@dataclass(frozen=True)
class LayoutChoice:
    """The layout chosen, and why: forced by the user, or the seconds per step each candidate took."""

    layout: Layout
    seconds: dict[Layout, float] = field(default_factory=dict)  # empty when forced

    def describe(self) -> str:
        if not self.seconds:
            return f"memory format {self.layout.label} (as asked)"
        fastest = min(self.seconds, key=self.seconds.get)
        ratio = max(self.seconds.values()) / self.seconds[fastest]
        timed = ", ".join(f"{layout.value} {1000 * s:.0f} ms" for layout, s in self.seconds.items())
        if self.layout is not fastest:
            why = f"{ratio:.2f}x apart, under the {MARGIN:.2f}x margin: the default"
        else:
            why = f"{ratio:.2f}x faster" if self.layout is not DEFAULT else f"the default, {ratio:.2f}x faster"
        return f"memory format {self.layout.label}, measured per step: {timed} ({why})"


def use_layout(model: nn.Module, layout: Layout) -> nn.Module:
    """Put the weights in `layout` and make every input follow them: a convolution runs channels_last when either
    its weights or its input are, so both must be NCHW for NCHW. Applying another layout replaces the first."""
    model.to(memory_format=layout.memory_format)
    previous = getattr(model, "_layout_hook", None)
    if previous is not None:
        previous.remove()
    model._layout_hook = model.register_forward_pre_hook(
        lambda module, args: (args[0].contiguous(memory_format=layout.memory_format), *args[1:]))
    return model


def choose_layout(requested: str, device: torch.device, step_in: Callable[[Layout], Callable[[], object]],
                  rounds: int = DEFAULT_ROUNDS) -> LayoutChoice:
    """The layout to run in: `requested` (auto, channels_last or contiguous), or with auto the one whose step runs
    fastest here. `step_in(layout)` builds, once per candidate, a step to time: a copy of the model in that
    layout doing what the caller will do (a training step, a prediction), leaving the real model untouched."""
    if requested != "auto":
        return LayoutChoice(Layout(requested))
    steps = {layout: step_in(layout) for layout in Layout}
    for step in steps.values():  # warm-up: oneDNN and cuDNN choose and build their kernels on the first call
        _seconds(step, device)
    timed: dict[Layout, list[float]] = {layout: [] for layout in Layout}
    for _ in range(rounds):
        for layout, step in steps.items():  # interleaved, so a burst of load elsewhere hits both candidates
            timed[layout].append(_seconds(step, device))
    seconds = {layout: min(times) for layout, times in timed.items()}  # the fastest: the least disturbed
    faster_enough = seconds[Layout.CONTIGUOUS] * MARGIN < seconds[DEFAULT]
    return LayoutChoice(Layout.CONTIGUOUS if faster_enough else DEFAULT, seconds)


def _seconds(step: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
