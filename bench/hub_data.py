"""Photos from a Hub dataset's parquet files against the same photos as JPEG files, and what `datasets` would add.

    python -m bench.hub_data                   # 2,000 real photos, 3 interleaved rounds
    PYTHONPATH=/tmp/datasets-only python -m bench.hub_data --photos 1000   # also time `datasets` where importable

The real photos of ../shared/data/dogs-vs-cats-200/train are packed, as microsoft/cats_vs_dogs is on the Hub, into
two parquet files `data/train-0000K-of-00002.parquet` (an `image` column of datasets' Image feature, a `labels`
ClassLabel), in a temporary folder. Then, alternating so that other load on the machine hits both alike:
- decoding them from the JPEG files (catsdogs.data.decode_photos on the files, as for a local folder);
- finding and decoding them from the parquet files (catsdogs.hub_data.photos_in_snapshot + decode_photos);
and, once, where `datasets` can be imported: `load_dataset("parquet", ...)`'s preparation (a copy of the parquet
data into its own Arrow cache) in seconds, and the size of that copy.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import report
from catsdogs.data import HubDataset, HubSnapshot, Photos, decode_photos, find_photos
from catsdogs.hub_data import photos_in_snapshot

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-200" / "train"
SIZE = 224


def pack(photos: Photos, folder: Path) -> None:
    """The photos as microsoft/cats_vs_dogs's parquet layout: two shards, datasets' Image and ClassLabel features."""
    features = {"image": {"_type": "Image"}, "labels": {"names": ["cat", "dog"], "_type": "ClassLabel"}}
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("labels", pa.int64())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.table({"image": [{"bytes": Path(p).read_bytes(), "path": Path(p).name} for p in photos.paths],
                      "labels": photos.labels}, schema=schema)
    (folder / "data").mkdir(parents=True)
    half = -(-len(photos) // 2)
    for k in range(2):
        pq.write_table(table.slice(k * half, half), folder / "data" / f"train-{k:05d}-of-00002.parquet",
                       row_group_size=100)  # datasets' own row group for images


def time_datasets(folder: Path) -> dict:
    """load_dataset's preparation of the parquet files into its Arrow cache: seconds and bytes (None: not installed)."""
    try:
        import datasets
    except ImportError:
        return {"datasets": None}
    cache = folder / "datasets-cache"
    started = time.perf_counter()
    datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (folder / "data").glob("*.parquet")),
                          split="train", cache_dir=str(cache))
    seconds = time.perf_counter() - started
    return {"datasets": datasets.__version__, "load_dataset_s": seconds,
            "arrow_cache_mb": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    everything = find_photos(DATA)[0]
    step = max(1, len(everything) // args.photos)
    files = everything.subset(list(range(0, len(everything), step))[:args.photos])
    folder = Path(tempfile.mkdtemp(prefix="bench-hub-data-"))
    try:
        pack(files, folder)
        parquet_mb = sum(p.stat().st_size for p in (folder / "data").glob("*.parquet")) / 1e6
        snapshot = HubSnapshot(HubDataset("bench/pets", None, "train"), "0" * 40, folder, "bench")
        rows = {"jpeg files": [], "parquet (hub_data)": []}
        for _ in range(args.rounds):
            for name in rows:
                started = time.perf_counter()
                photos = files if name == "jpeg files" else photos_in_snapshot(snapshot)
                images, _, skipped = decode_photos(photos, SIZE, args.workers, progress=False)
                rows[name].append(len(images) / (time.perf_counter() - started))
                assert not skipped
        median = {name: sorted(rates)[len(rates) // 2] for name, rates in rows.items()}
        extra = time_datasets(folder)
        report(f"{len(files)} photos of {DATA.name}/ decoded to {SIZE}x{SIZE} ({parquet_mb:.0f} MB of parquet), "
               f"{args.rounds} interleaved rounds",
               ["source", "images/s (median)", "rounds", "vs files"],
               [[name, median[name], " ".join(f"{r:.0f}" for r in rates), median[name] / median["jpeg files"]]
                for name, rates in rows.items()], extra)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
