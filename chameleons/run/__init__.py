"""A run's front door: flags, the run record, checks before torch is imported, checkpoints found on disk, reporters, resubmission."""
