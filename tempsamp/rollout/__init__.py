"""Rollout backends: vLLM engine (default) and HF generate, behind one interface."""
