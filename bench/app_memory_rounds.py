"""Whether the demo's server memory stops growing under load: rounds of concurrent clients against ONE server.

    python -m bench.app_memory_rounds                                  # 8 rounds of 16 clients x 20 s
    python -m bench.app_memory_rounds --rounds 4 --clients 32 --seconds 60 --load worst
    python -m bench.app_memory_rounds --app /tmp/before/app.py         # another checkout's app.py

Starts `python app.py` once on a free loopback port (nothing but 127.0.0.1 is contacted). Each round, `clients`
threads send requests for `seconds`, as one of bench.app_memory's concurrent cases: `photos`, /predict with
500x375 JPEGs (many small requests, each from a new session as a new visitor's would be), or `worst`, the worst
request of each path in turn (huge PNG and WebP uploads, `data:` URLs, live frames, 100-photo batches). 5 s after
each round the script reads the server's RSS, its peak RSS (VmHWM) and the number of glibc malloc arenas (found in
/proc/PID/maps and /proc/PID/mem). Memory that a round leaves behind and the
next ones do not reuse shows as RSS still rising round after round. Linux only (/proc).
"""

import argparse
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from bench.app_load import ROOT, start_app
from bench.app_memory import Server, cases, make_inputs, status_mb
from bench.common import report

LOADS = {"photos": "/predict: 500×375 JPEGs", "worst": "the worst case of each path in turn"}  # bench.app_memory's
HEAP_BYTES = 64 * 2**20  # glibc's HEAP_MAX_SIZE on 64-bit: each non-main arena lives in such aligned mappings
HEAP_INFO_BYTES = 48  # glibc's heap_info header on 64-bit: five 8-byte fields, padded to 16 bytes


def malloc_arenas(pid: int) -> int:
    """How many glibc malloc arenas the process has: the main one, and one per heap that opens an arena. Such a
    heap starts on a 64 MB boundary inside an anonymous read-write mapping, and its header (heap_info: ar_ptr,
    prev, size, mprotect_size) names the arena that follows it, no previous heap, and sizes within 64 MB.
    Other allocators map such boundaries too (pyarrow's bundled jemalloc, which Gradio loads, maps 1 GB blocks
    that begin with a pointer to themselves), so the whole header is checked, not only its first field.
    Reads /proc/PID/maps and /proc/PID/mem: the process's owner or root."""
    boundaries = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if len(fields) == 5 and fields[1].startswith("rw"):  # anonymous: no file name
            boundaries += range(-(-start // HEAP_BYTES) * HEAP_BYTES, end, HEAP_BYTES)
    arenas = 0
    with open(f"/proc/{pid}/mem", "rb") as memory:
        for heap in boundaries:
            memory.seek(heap)
            ar_ptr, prev, size, mprotect_size = struct.unpack("<4Q", memory.read(32))
            arenas += ar_ptr == heap + HEAP_INFO_BYTES and prev == 0 and 0 < size <= mprotect_size <= HEAP_BYTES
    return 1 + arenas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", type=Path, default=ROOT / "app.py", help="the app.py to measure")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20, help="how long each round sends requests")
    parser.add_argument("--load", choices=LOADS, default="photos", help="what the clients send (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per request")
    args = parser.parse_args()
    app_file = args.app.resolve()
    with tempfile.TemporaryDirectory(prefix="app-memory-rounds-") as tmp:
        files = make_inputs(Path(tmp))
        photos = sorted(Path(tmp).glob("photo*.jpg"))
        app, url = start_app(app_file, stdout=open(Path(tmp) / "app.log", "w"), stderr=subprocess.STDOUT)
        try:
            server = Server(url, args.timeout)
            name = f"{args.clients} clients, {LOADS[args.load]}, {args.seconds:.0f} s"
            load = cases(server, files, photos, args.clients, args.seconds)[name]
            rows = [["idle, after start", "-", status_mb(app.pid, "VmRSS"), status_mb(app.pid, "VmHWM"),
                     malloc_arenas(app.pid)]]
            print(" | ".join(map(str, rows[-1])), flush=True)
            for round_number in range(1, args.rounds + 1):
                answers = load()
                time.sleep(5)
                rows.append([f"after round {round_number}", answers[:90], status_mb(app.pid, "VmRSS"),
                             status_mb(app.pid, "VmHWM"), malloc_arenas(app.pid)])
                print(" | ".join(map(str, rows[-1])), flush=True)
        finally:
            app.kill()
            app.wait()
    report(f"app.py server memory over {args.rounds} rounds of {args.clients} clients x {args.seconds:.0f} s "
           f"({LOADS[args.load]}), one server ({app_file})",
           ["when", "answers in the round", "RSS MB", "peak RSS MB", "malloc arenas"], rows)


if __name__ == "__main__":
    main()
