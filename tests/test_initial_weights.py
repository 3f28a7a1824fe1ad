"""The initial weights a run starts from without reading the model again (a sweep's host copy,
`--partition_cache`'s files): what is kept, and how the cache fails safe. The 2-process runs that
write and read a real cache are in tests/test_train_e2e.py (run_a writes, the sweep reads)."""

import json

import pytest
import torch

from chameleons.train import initial_weights


class Partitioned(torch.nn.Module):
    """Stands for a ZeRO-3 model: each parameter's `ds_tensor` is this rank's partition."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.register_buffer("correction_bias", torch.zeros(2))  # persistent: in the checkpoint
        self.register_buffer("inv_freq", torch.ones(2), persistent=False)  # rebuilt by the constructor
        for p in self.parameters():
            p.ds_tensor = p.data.flatten()[:2].clone()


def test_partitions_and_persistent_buffers_are_kept_and_restored():
    model = Partitioned()
    model.correction_bias.fill_(0.5)  # e.g. an MoE router's score correction, read from the checkpoint
    kept = initial_weights.capture(model, "k")
    assert set(kept.state) == {"proj.weight", "proj.bias"} and set(kept.buffers) == {"correction_bias"}
    fresh = Partitioned()  # built from its config: other values
    initial_weights.restore(fresh, kept)
    assert all(fresh.get_parameter(n).ds_tensor.equal(t) for n, t in kept.state.items())
    assert fresh.correction_bias.equal(torch.full((2,), 0.5))
    with pytest.raises(RuntimeError, match="parameters differ"):
        initial_weights.restore(torch.nn.Linear(3, 2), kept)


def test_a_cache_entry_counts_only_once_complete_and_a_failed_write_says_why(tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"w" * 10)
    entry = initial_weights.cache_folder(tmp_path / "cache", "key", model_dir)
    assert not initial_weights.cached(entry) and initial_weights.read(entry, "key", 0, 1, "cpu") is None
    kept = initial_weights.capture(Partitioned(), json.dumps(["key"]))
    assert initial_weights.write(entry, kept, 0, 1, "cpu") == f"partition cache written: {entry}"
    back = initial_weights.read(entry, kept.key, 0, 1, "cpu")
    assert back.state.keys() == kept.state.keys() and back.buffers.keys() == kept.buffers.keys()
    (entry / "rank00000-of-00001.pt").write_bytes(b"damaged")
    assert initial_weights.read(entry, kept.key, 0, 1, "cpu") is None  # read the model instead

    def full_disk(obj, path):  # torch.save reports ENOSPC as a RuntimeError from its zip writer
        open(path, "wb").write(b"x")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    other = initial_weights.cache_folder(tmp_path / "cache2", "key", model_dir)
    said = initial_weights.write(other, kept, 0, 1, "cpu")
    assert said.startswith("partition cache not written: [enforce fail")
    assert not initial_weights.cached(other) and not list(other.glob("*.part"))  # nothing half-written left


def test_the_entry_changes_with_the_model_files_and_is_none_for_a_hub_name(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"w" * 10)
    first = initial_weights.cache_folder(tmp_path, "key", model_dir)
    assert first == initial_weights.cache_folder(tmp_path, "key", model_dir)
    assert first != initial_weights.cache_folder(tmp_path, "other key", model_dir)
    (model_dir / "model.safetensors").write_bytes(b"w" * 11)  # retrained into the same folder
    assert initial_weights.cache_folder(tmp_path, "key", model_dir) != first
    assert initial_weights.cache_folder(tmp_path, "key", "Qwen/Qwen3-30B-A3B") is None
