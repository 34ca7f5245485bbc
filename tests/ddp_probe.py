"""Runs train.py under torchrun and records, per process, what it trained on and the weights it ended with.

    torchrun --standalone --nproc-per-node 2 tests/ddp_probe.py RECORD_DIR TRAIN_ARGS...

Writes RECORD_DIR/rank<N>.json: the photo indices of each epoch's shard and a
digest of the final parameters, so a test can check the shards are disjoint and
the processes stayed in sync. Training itself is the real, unmodified code.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train as train_cli  # noqa: E402
from catsdogs import loader  # noqa: E402

record_dir, train_args = Path(sys.argv[1]), sys.argv[2:]
record = {"rank": int(os.environ["RANK"]), "shards": {}}

real_epoch_shard, real_train = loader.epoch_shard, train_cli.train


def recording_epoch_shard(n, epoch, seed, ranks):
    shard = real_epoch_shard(n, epoch, seed, ranks)
    record["shards"][epoch] = shard.tolist()
    return shard


def recording_train(config, command=None):
    result = real_train(config, command)
    flat = torch.cat([p.detach().flatten().cpu() for p in result.model.parameters()])
    record["parameters_sha256"] = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
    return result


loader.epoch_shard, train_cli.train = recording_epoch_shard, recording_train
code = train_cli.main(train_args)
(record_dir / f"rank{record['rank']}.json").write_text(json.dumps(record))
sys.exit(code)
