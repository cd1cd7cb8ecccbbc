"""Errors that stop a training run, shared by the driver loop and the step repair."""


class StepFailed(RuntimeError):
    """A step could not complete (retries exhausted, learner died, timeout, stale rollouts); the
    message names the stage, role and actor."""


class BadSampleError(RuntimeError):
    """A sample is unusable and data.on_bad_sample=stop."""
