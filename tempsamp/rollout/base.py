"""The rollout interface both backends implement, and the messages they exchange."""

from __future__ import annotations

import msgspec


class SamplingSpec(msgspec.Struct, frozen=True):
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 256
    greedy: bool = False
    seed: int | None = None

    @classmethod
    def for_step(cls, rollout_cfg, step: int, round: int = 0) -> "SamplingSpec":
        """The training sampling settings of `cfg.rollout` for training step `step` (seeded by
        `step_seed(rollout.seed, step)`): the one rule for the trainer and the recipe check. `round`
        > 0 numbers the extra prompt draws of dynamic sampling (algorithm.filter_groups): their seeds
        differ from round 0's, so the same prompt positions never reuse a noise stream."""
        r = rollout_cfg
        seed = step_seed(r.seed, step)
        if seed is not None and round:
            seed += round << 40
        return cls(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                   max_new_tokens=r.max_new_tokens, seed=seed)


def step_seed(rollout_seed: int | None, step: int) -> int | None:
    """The sampling seed of training step `step` (None: unseeded)."""
    return None if rollout_seed is None else rollout_seed * 100003 + step


def request_seed(call_seed: int, key: int) -> int:
    """The sampling seed of prompt `key` in a call seeded `call_seed`: a 64-bit mix (splitmix64) of both,
    so seeds of different prompts and of consecutive calls never form overlapping runs (seed + key
    made prompt k+1 of step s reuse prompt k's stream of step s+1). Fits in 62 bits, leaving room for
    the engines' per-sample offsets."""
    x = (call_seed * 0x9E3779B97F4A7C15 + key + 1) & 0xFFFFFFFFFFFFFFFF
    for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x = ((x ^ (x >> shift)) * mul) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) >> 2


class PromptRequest(msgspec.Struct):
    """One prompt: its chat-templated text; the decoded video travels as a separate ObjectRef."""

    key: int  # index of the prompt in the step's batch
    prompt_text: str


class RolloutGroup(msgspec.Struct):
    key: int
    response_ids: list[list[int]]  # without padding; includes EOS when the model stopped
    texts: list[str]
    # per sampled token, under the distribution the engine sampled from (the behaviour policy):
    # temperature, top-k and top-p applied (vLLM logprobs_mode="processed_logprobs"; HF: the warped
    # scores). Greedy calls: the unscaled policy. The learner's own log-probs at rollout.temperature
    # equal these when top_k / top_p leave the token's distribution whole.
    logprobs: list[list[float]]
    weight_version: int
    engine: str = ""
