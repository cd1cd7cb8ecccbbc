"""Model families we train: tiny offline builders and a loader for real checkpoints."""
