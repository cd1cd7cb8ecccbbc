"""Errors that stop a training run, shared by the driver loop and the step repair."""

# `tempsamp train` exits with this status after a SIGTERM / SIGINT (sysexits' EX_TEMPFAIL: "temporary
# failure, retry"): the run was preempted, not broken; rerun with checkpoint.resume=auto to continue.
PREEMPTED_EXIT = 75


class StepFailed(RuntimeError):
    """A step could not complete (retries exhausted, learner died, timeout, stale rollouts); the
    message names the stage, role and actor."""


class LearnerFailed(StepFailed):
    """A learner rank died or hung: the FSDP group is broken (the driver may restart it, see
    trainer.max_learner_restarts)."""


class Preempted(KeyboardInterrupt):
    """A SIGTERM / SIGINT asked the run to stop now (tempsamp/preemption.py). A KeyboardInterrupt: no
    `except Exception` on the way swallows it, and Ray's blocking calls let only KeyboardInterrupt out
    of a signal handler (they re-raise it as a plain KeyboardInterrupt, so the driver reads the reason
    from the guard, `PreemptionGuard.stopped`)."""


class BadSampleError(RuntimeError):
    """A sample is unusable and data.on_bad_sample=stop."""
