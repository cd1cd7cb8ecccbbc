"""Learner rank (no Ray): FSDP2 sharding, the PPO-clip step, checkpoints, and the core composing them."""
