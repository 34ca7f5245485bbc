"""Checkpoints are safetensors (no pickle) and survive a round trip of everything training needs."""

import pytest
import torch
from safetensors import safe_open

from catsdogs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_of_training_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=10)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": torch.get_rng_state(), "epoch": 3, "best": {"accuracy": 0.5, "model": None}, "pair": (1, "a")}
    path = tmp_path / "ck" / "last.safetensors"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)

    assert loaded["epoch"] == 3 and loaded["best"] == {"accuracy": 0.5, "model": None} and loaded["pair"] == (1, "a")
    assert torch.equal(loaded["rng"], state["rng"])
    restored = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    restored.load_state_dict(loaded["optimizer"])
    assert list(loaded["optimizer"]["state"].keys()) == [0, 1]  # int keys survive
    torch.testing.assert_close(restored.state_dict()["state"][0]["exp_avg"],
                               optimizer.state_dict()["state"][0]["exp_avg"])
    assert loaded["scheduler"] == scheduler.state_dict()
    with safe_open(path, framework="pt") as f:  # a plain safetensors file
        assert "catsdogs_checkpoint" in f.metadata()
    assert [p.name for p in path.parent.iterdir()] == ["last.safetensors"]  # no partial file left


def test_missing_or_damaged_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(damaged)


def test_refuses_what_it_cannot_store_without_pickle(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint({"f": lambda: 1}, tmp_path / "x.safetensors")
