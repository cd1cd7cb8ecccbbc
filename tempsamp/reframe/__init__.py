"""Highlight Video Re-framing kit (the original's `baseline/`): centre and two-stage Qwen-VL baselines,
a submission validator and a preview, on our Ray decode pool and engines."""
