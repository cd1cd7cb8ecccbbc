"""Thin Ray actor shells over the pure cores (decode, rollout, reward, learner) and their pools."""
