"""Reward: grounding IoU + format, non-linear shaping, GT responses."""
