"""The files a training run writes beside its model, and the facts they record about the
process (versions, peak memory)."""

import json
import platform

import torch

from ..core import outputs


def peak_memory(on_gpu: bool) -> dict:
    """This process's peaks: GPU memory PyTorch allocated (on a GPU) and host memory (RSS)."""
    import resource

    out = {"peak_host_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}
    if on_gpu:
        out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out


def versions() -> str:
    import accelerate
    import datasets
    import transformers

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}",
             f"transformers {transformers.__version__}", f"accelerate {accelerate.__version__}",
             f"datasets {datasets.__version__}"]
    try:
        import deepspeed

        parts.append(f"deepspeed {deepspeed.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def write_manifest(output_dir, encoded, max_epochs: int):
    """Which samples are validation and which train, for every epoch this run may train."""
    ids = encoded.dataset_ids
    epochs = range(max_epochs) if encoded.resample else [0]
    seen, per_epoch = set(), []
    for e in epochs:
        rows = encoded.train_rows(e)
        new = [r for r in rows if r not in seen]
        seen.update(rows)
        per_epoch.append({"epoch": e, "train": [ids[r] for r in rows], "new_samples": len(new),
                          "pool_coverage": round(len(seen) / max(1, sum(len(m) for m in encoded.split.pool.values())), 4)})
    outputs.write_json(outputs.run_path(output_dir, outputs.MANIFEST_NAME), {
        "validation": [ids[r] for r in encoded.val_rows],
        "whole_validation": sorted(encoded.split.whole_val),
        "group_by": encoded.split.group_by,
        "epochs": per_epoch,
        "split": encoded.split.stats.as_dict(),
        "history_pool": {s.sample_id: s.uid for s in encoded.split.pool_samples()},
    })


def write_trace(output_dir, rank, trace):
    """The dataset rows of every micro-batch this rank trained on, in order."""
    path = outputs.run_path(output_dir, "training_logs", f"data_order_rank{rank}.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for rows in trace:
            f.write(json.dumps(rows) + "\n")
