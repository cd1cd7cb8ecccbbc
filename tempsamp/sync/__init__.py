"""Learner -> rollout weight synchronisation."""
