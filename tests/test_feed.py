"""bench.feed on the CPU, on a few generated photos: every row measured, the table and the JSON line printed."""

import json
import threading

from imagegen import write_kaggle_folder

from bench import feed


def test_the_feed_benchmark_runs_on_the_cpu(tmp_path, capsys):
    data = write_kaggle_folder(tmp_path / "photos", per_class=12)
    feed.main(["--device", "cpu", "--data", str(data), "--batch", "8", "--seconds", "0.2", "--rounds", "1"])
    out = capsys.readouterr().out
    rows = json.loads(out.split("\nJSON ", 1)[1])["rows"]
    assert [row["feed"].split(": ", 1)[1] for row in rows][-2:] == ["training step, photos resident",
                                                                     "training step, photos streamed"]
    assert len(rows) == 6 and all(row["images/s"] > 0 for row in rows)
    assert not [t for t in threading.enumerate() if t.name == "catsdogs-prefetch"]
