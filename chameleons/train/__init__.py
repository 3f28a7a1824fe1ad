"""Training: the recipe (TrainingRun), the Trainer, model set-up, ZeRO-3 and expert parallelism, memory and FLOPs, saves, stopping, logs and the plan."""
