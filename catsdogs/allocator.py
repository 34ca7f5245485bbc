"""Which memory allocator training runs on: jemalloc when the system has it, decided before PyTorch loads.

A CPU training step frees and re-allocates gigabytes of activations. glibc's malloc hands them back to the kernel
and page-faults them in again on the next step; jemalloc, told to keep freed pages, reuses them
(docs/performance.md has what that is worth on each CPU). An allocator can only be chosen when a process starts, so
`use_jemalloc` restarts the program once with jemalloc preloaded. This module imports nothing heavy, so the
restart happens before PyTorch is loaded.
"""

import glob
import os
import sys

SWITCH = "CATSDOGS_ALLOCATOR"  # "system" keeps the system's malloc; set to "jemalloc" after the restart
KEEP_FREED_PAGES = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
INSTALL_HINT = "sudo apt-get install libjemalloc2"


def find_jemalloc() -> str | None:
    """The shared library's path, where Debian/Ubuntu, Fedora or Homebrew-on-Linux put it."""
    patterns = ["/usr/lib/*-linux-gnu/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2",
                "/usr/local/lib/libjemalloc.so.2", "/home/linuxbrew/.linuxbrew/lib/libjemalloc.so.2"]
    return next((match for pattern in patterns for match in sorted(glob.glob(pattern))), None)


def jemalloc_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return "libjemalloc" in maps.read()
    except OSError:  # not Linux
        return False


def use_jemalloc() -> None:
    """Restart this program under jemalloc, once, unless it runs on it already, it is absent, or the user said no."""
    if os.environ.get(SWITCH) in ("system", "jemalloc") or sys.platform != "linux" or jemalloc_loaded():
        return
    library = find_jemalloc()
    if library is None:
        return
    preload = ":".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    env = {**os.environ, "LD_PRELOAD": preload, "MALLOC_CONF": os.environ.get("MALLOC_CONF", KEEP_FREED_PAGES),
           SWITCH: "jemalloc"}  # marks the restarted process: never a second restart, even if the preload failed
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def describe_allocator() -> str:
    """The allocator in words, with what to do when a faster one is available but not used."""
    if jemalloc_loaded():
        return "jemalloc"
    if os.environ.get(SWITCH) == "system":
        return f"the system's malloc ({SWITCH}=system)"
    if find_jemalloc() is None:
        return f"the system's malloc (CPU training is faster with jemalloc: {INSTALL_HINT})"
    return "the system's malloc"
