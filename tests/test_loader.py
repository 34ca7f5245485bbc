"""Where the photos live while training (--photos-on), and the batches fetched ahead on a background thread."""

import threading

import pytest
import torch
from conftest import assert_same_training
from imagegen import write_kaggle_folder

from catsdogs.config import TrainConfig
from catsdogs.device import Ranks
from catsdogs.loader import Placement, PhotoLoader, epoch_shard, gather, place_photos, prefetched
from catsdogs.training import train


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "catsdogs-prefetch"]


def batches_of(n: int = 40, batch_size: int = 8) -> PhotoLoader:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=generator)
    return PhotoLoader(images, torch.arange(n) % 2, batch_size=batch_size, seed=3, augment=True, mean=(0.5,) * 3,
                       std=(0.25,) * 3)


def test_prefetched_batches_are_the_ones_fetched_in_turn_with_the_same_random_draws():
    loader = batches_of()
    torch.manual_seed(7)
    fetched = list(loader.epoch(2))
    torch.manual_seed(7)  # the same batches gathered in the loop itself, augmented with the same draws
    in_turn = [(loader.prepare(gather(loader.images, indices)), loader.labels[indices])
               for indices in epoch_shard(len(loader), 2, loader.seed, Ranks()).split(loader.process_batch)]
    assert len(fetched) == len(in_turn) == loader.steps
    for (images, labels), (expected_images, expected_labels) in zip(fetched, in_turn, strict=True):
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert not prefetch_threads()


def test_an_epoch_left_early_leaves_no_thread_behind():
    loader = batches_of()
    for _ in loader.epoch(1):
        break  # the generator is closed when it is dropped
    assert not prefetch_threads()
    with pytest.raises(RuntimeError, match="a failed step"):
        for _ in loader.epoch(1):
            raise RuntimeError("a failed step")
    assert not prefetch_threads()
    epoch = loader.epoch(1)
    next(epoch)
    with pytest.raises(KeyboardInterrupt):
        epoch.throw(KeyboardInterrupt)  # Ctrl-C while the step runs
    assert not prefetch_threads()


def test_a_kill_while_the_prefetch_thread_starts_stops_it_too(monkeypatch):
    """A kill (SIGTERM: a KeyboardInterrupt in train.py) can land while `Thread.start` waits for the new thread to
    run, which a busy machine takes a while to do. The thread must still end with the generator: a daemon thread left
    inside PyTorch's C++ code when the process exits aborts it ("terminate called without an active exception")."""
    start = threading.Thread.start

    def start_then_interrupted(thread: threading.Thread) -> None:
        start(thread)
        raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        next(prefetched(lambda item: torch.full((64, 64), float(item)) @ torch.ones(64, 64), range(100), depth=1))
    monkeypatch.undo()
    for thread in prefetch_threads():
        thread.join(timeout=5)
    assert not prefetch_threads()


def test_a_failed_fetch_is_raised_in_the_consumer():
    def fetch(item: int) -> int:
        if item == 2:
            raise OSError("unreadable")
        return item

    got = []
    with pytest.raises(OSError, match="unreadable"):
        for item in prefetched(fetch, range(5), depth=1):
            got.append(item)
    assert got == [0, 1] and not prefetch_threads()


def test_on_the_cpu_the_photos_stay_on_the_host_whatever_is_asked():
    for requested in ("auto", "device", "host"):
        placement = place_photos(3_500_000_000, torch.device("cpu"), requested)
        assert not placement.on_device and "3.5 GB in host memory" in placement.description


def test_on_a_gpu_the_photos_go_there_when_they_take_at_most_half_of_its_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2_000_000_000, 80_000_000_000))
    gpu = torch.device("cuda", 0)
    assert place_photos(900_000_000, gpu) == Placement(True, "900.0 MB copied to the GPU (2.0 GB free)")
    assert place_photos(1_100_000_000, gpu) == Placement(
        False, "1.1 GB left in the cache file, streamed to the GPU a batch at a time (more than half of the GPU's "
               "2.0 GB free)")
    assert place_photos(3_500_000_000, gpu, "device").on_device  # forced: the user knows better
    assert place_photos(900_000_000, gpu, "host") == Placement(
        False, "900.0 MB left in the cache file, streamed to the GPU a batch at a time (--photos-on host)")


def test_photos_on_host_on_the_cpu_is_the_default_path_and_trains_the_same_weights(tmp_path, capsys):
    """On the CPU there is one place for the photos: the flag must change nothing (the GPU's streamed path is
    checked by bench.feed on a GPU, not here)."""
    data = write_kaggle_folder(tmp_path / "photos", per_class=6)
    recipe = dict(data=str(data), val_fraction=0.25, epochs=1, batch_size=4, cache_dir=str(tmp_path / "cache"),
                  memory_format="channels_last")  # compared bit for bit: no measured choice of layout
    for photos_on in ("auto", "host"):
        train(TrainConfig(output=str(tmp_path / photos_on / "weights"), photos_on=photos_on,
                          checkpoint=str(tmp_path / photos_on / "ck" / "last.safetensors"), **recipe), command="test")
    assert " MB in host memory, the mapped cache file (on the CPU, device and host" in capsys.readouterr().out
    assert_same_training(tmp_path / "host", tmp_path / "auto")
    assert not prefetch_threads()
