"""Prediction: models loaded from run folders, generation, ranks and resumable shards, and the final fidelity a training run scores."""
