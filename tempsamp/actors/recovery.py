"""In-job learner recovery. A learner rank that died or hung leaves a broken FSDP group (it cannot
admit a new member) and a broken weight-broadcast group (rank 0 sends in it). `LearnerRecovery`
tears both down and builds them again: every learner rank restarted in its placement bundle, a new
FSDP group set up from the base model, a new broadcast group with every engine. The driver then
restores its last checkpoint into it and re-syncs the engines (`Trainer._restore`), at most
`trainer.max_learner_restarts` times per run.
"""

from __future__ import annotations

import logging

from ..errors import LearnerFailed
from .learner_group import LearnerGroup
from .pools import Pools
from .weight_sync import WeightBroadcast

log = logging.getLogger(__name__)


class LearnerRecovery:
    def __init__(self, cfg, pools: Pools, weights: WeightBroadcast, model_dir: str):
        self.cfg, self.pools, self.weights, self.model_dir = cfg, pools, weights, model_dir
        self.limit = cfg.trainer.max_learner_restarts
        self.restarts = 0  # learner-group restarts so far (faults/learner_restarts)

    def restart(self, failure: LearnerFailed, group: LearnerGroup) -> LearnerGroup:
        """A fresh learner group in place of `group` (same ranks, bundles and LR schedule length), the
        broadcast group rebuilt around it. Raises `failure`, with a resume hint, once the restarts
        allowed are used up."""
        if self.restarts >= self.limit:
            raise LearnerFailed(f"{failure}; learner restarts used up (trainer.max_learner_restarts={self.limit}) "
                                f"— rerun with checkpoint.resume=auto to continue from the last checkpoint") from None
        self.restarts += 1
        log.warning("learner restart %d/%d: %s", self.restarts, self.limit, failure)
        self.pools.restart_all("learner", str(failure))
        new = LearnerGroup(self.pools.learners, self.cfg, self.model_dir, group.total_steps)
        self.weights.host = new.host
        self.weights.rebuild_group()
        return new
