"""The decoded-photo cache: first run vs cached run, feed rate from the mapping, a training process's own memory.

    python -m bench.cache                      # 5,000 real photos for the timings, 1,000 and 6,000 for the memory
    python -m bench.cache --photos 2000 --memory 500 2000

Every figure comes from a fresh subprocess (as a new `train.py` would be) on the real photos in
../shared/data/dogs-vs-cats-200/train, with the cache in a temporary folder removed afterwards:
- time to the first training step: from before the photos are looked for to the end of the first optimisation
  step (train.py's batch 64, augmentation, the CPU's training precision), with the cache missing (decoded now
  and written), present (read from the cache) and turned off (--no-cache: decoded in memory, as before);
- the process's own peak memory, RssAnon in /proc/self/status (anonymous memory: the page cache and the mapped
  file do not count, as they are shared and the kernel can drop them), sampled every 10 ms until 3 steps are done;
- the feed rate: random batches of 64 photos indexed from the mapped cache file (catsdogs.loader.gather, as
  training indexes them; the file is in the page cache, just written), in images/s, without the model, and the
  same from the photos copied into memory.

    python -m bench.cache --keys               # what keying on the photos' content and the checksums cost

With --keys: the time to compute a cache key (every photo file read and hashed) for all the shared photos, cold
(each file's pages dropped from the page cache first, with posix_fadvise) and warm, against a key of each file's
size and modification time alone; and the time to check a cache's checksums when it is mapped, cold and warm.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __name__ == "__main__":  # the allocator train.py runs on
    from catsdogs.allocator import use_jemalloc

    use_jemalloc()

import torch  # noqa: E402

from bench.common import report  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-200" / "train"


def rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def first_photos(n: int):
    """n real photos, half of each class, the same ones every time."""
    from catsdogs.data import find_photos

    photos, _ = find_photos(DATA)
    cats = [i for i, y in enumerate(photos.labels) if y == 0][:n // 2]
    dogs = [i for i, y in enumerate(photos.labels) if y == 1][:n - n // 2]
    return photos.subset(cats + dogs)


def child(n: int, cache: bool, steps: int) -> dict:
    """In a fresh process: the photos loaded as train.py loads them, then `steps` training steps."""
    from catsdogs.cache import cache_key, default_dir
    from catsdogs.config import TrainConfig
    from catsdogs.loader import PhotoLoader
    from catsdogs.model import INPUT_SIZE
    from catsdogs.training import start_run

    hit = (default_dir() / f"{cache_key(first_photos(n), INPUT_SIZE)}.npy").exists()
    source = "read from cache" if cache and hit else "decoded now, cached" if cache else "decoded now (--no-cache)"
    peak, done = [rss_anon_mb()], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak.append(rss_anon_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    device = torch.device("cpu")
    photos = first_photos(n)
    config = TrainConfig(data=str(DATA), batch_size=64, memory_format="channels_last")
    loader = PhotoLoader.load(photos, INPUT_SIZE, device, "training", os.cpu_count() or 1, False, cache,
                              batch_size=config.batch_size, augment=True)
    ready = time.perf_counter() - started
    run = start_run(config, device, loader.steps, loader.process_batch)
    first_step = None
    for step, (images, labels) in enumerate(loader.epoch(1)):
        run.step(images, labels)
        if step == 0:
            first_step = time.perf_counter() - started
        if step + 1 == steps:
            break
    done.set()
    sampler.join()
    peak.append(rss_anon_mb())
    return {"photos": n, "cache": cache, "ready_s": ready, "first_step_s": first_step, "peak_rss_anon_mb": max(peak),
            "source": source}


def in_subprocess(n: int, cache: bool, steps: int, cache_dir: Path) -> dict:
    command = [sys.executable, "-m", "bench.cache", "--child", str(n), str(int(cache)), str(steps)]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                            env={**os.environ, "CATSDOGS_CACHE_DIR": str(cache_dir)}, timeout=1200)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def feed_rate(n: int, cache_dir: Path, batches: int = 300) -> tuple[float, float]:
    """Images/s of random batches of 64 indexed from the mapped cache, and from the same photos in memory."""
    from catsdogs.cache import decoded_photos
    from catsdogs.loader import gather

    photos = first_photos(n)
    mapped = decoded_photos(photos, 224, os.cpu_count() or 1, "training", False, cache_dir=cache_dir).images
    in_memory = mapped.clone()
    rates = []
    for images in (mapped, in_memory):
        generator = torch.Generator().manual_seed(0)
        gather(images, torch.randint(n, (64,), generator=generator))  # warm-up
        started = time.perf_counter()
        for _ in range(batches):
            gather(images, torch.randint(n, (64,), generator=generator))
        rates.append(64 * batches / (time.perf_counter() - started))
    return rates[0], rates[1]


def drop_from_page_cache(paths) -> None:
    """Make the next read of these files come from the disk (no privileges needed: the pages are clean)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def key_costs(cache_dir: Path) -> None:
    from catsdogs.cache import cache_key, decoded_photos
    from catsdogs.data import find_photos
    from catsdogs.model import INPUT_SIZE

    photos, _ = find_photos(DATA)
    full_size, _ = find_photos(DATA.parents[1] / "dogs-vs-cats-fullres-sample")
    photos.paths += full_size.paths
    photos.labels += full_size.labels
    rows, workers = [], os.cpu_count() or 1
    started = time.perf_counter()
    for path in photos.paths:
        stat = path.stat()
        hash((str(path.absolute()), stat.st_size, stat.st_mtime_ns))
    rows.append(["size and modification time only", "warm", time.perf_counter() - started])
    for state in ("cold", "warm"):
        if state == "cold":
            drop_from_page_cache(photos.paths)
        started = time.perf_counter()
        cache_key(photos, INPUT_SIZE, workers)
        rows.append([f"content key ({workers} threads)", state, time.perf_counter() - started])
    some = photos.subset(list(range(0, len(photos), 4)))  # a quarter: the cache file of 5,800 photos is 0.9 GB
    decoded_photos(some, INPUT_SIZE, workers, "benchmark", False, cache_dir=cache_dir)
    array = next(cache_dir.glob("*.npy"))
    for state in ("cold", "warm"):
        if state == "cold":
            drop_from_page_cache([array])
        started = time.perf_counter()
        decoded_photos(some, INPUT_SIZE, workers, "benchmark", False, cache_dir=cache_dir)
        rows.append([f"map a cache of {len(some):,} photos ({array.stat().st_size / 1e9:.2f} GB), key and checksums",
                     state, time.perf_counter() - started])
    megabytes = sum(path.stat().st_size for path in photos.paths) / 1e6
    report(f"Photo cache keys and checksums, {len(photos):,} photo files ({megabytes:.0f} MB)",
           ["what", "page cache", "seconds"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=5000, help="photos of the first-run/cached-run timing")
    parser.add_argument("--memory", type=int, nargs=2, default=(1000, 6000), help="photo counts of the memory rows")
    parser.add_argument("--keys", action="store_true", help="time the content keys and checksums instead")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, cache, steps = args.child
        print(json.dumps(child(n, bool(cache), steps)))
        return
    if not DATA.is_dir():
        sys.exit(f"the real photos are not at {DATA}")
    cache_dir = Path(tempfile.mkdtemp(prefix="bench-photo-cache-"))
    if args.keys:
        try:
            return key_costs(cache_dir)
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
    try:
        rows = []
        for n, steps in ((args.photos, 1), *((m, 3) for m in args.memory)):
            for cache in (True, True, False):  # a miss (decoded and written), a hit, then the cache turned off
                result = in_subprocess(n, cache, steps, cache_dir)
                rows.append([n, result["source"], result["ready_s"], result["first_step_s"],
                             result["peak_rss_anon_mb"], steps])
                print(rows[-1], file=sys.stderr)
        sizes = {f.stat().st_size for f in cache_dir.glob("*.npy")}
        per_photo = max(sizes) / max(args.photos, *args.memory)
        mapped, in_memory = feed_rate(max(args.memory), cache_dir)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    report("Photo cache: first run vs cached run, a training process's own memory (CPU)",
           ["photos", "photos from", "photos ready (s)", "first training step done (s)",
            "peak RssAnon (MB)", "steps run"], rows,
           {"cache_bytes_per_photo": per_photo, "feed_images_per_s_mapped": mapped,
            "feed_images_per_s_in_memory": in_memory})
    print(f"\ncache size per photo: {per_photo:,.0f} bytes; feed rate, random batches of 64 indexed on the CPU: "
          f"{mapped:,.0f} images/s from the mapped cache, {in_memory:,.0f} images/s from the same photos in memory")


if __name__ == "__main__":
    main()
