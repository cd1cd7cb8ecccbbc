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
    def from_rollout(cls, rollout_cfg, seed: int | None) -> "SamplingSpec":
        """The training sampling settings of `cfg.rollout` with this step's seed."""
        r = rollout_cfg
        return cls(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                   max_new_tokens=r.max_new_tokens, seed=seed)


class PromptRequest(msgspec.Struct):
    """One prompt: its chat-templated text; the decoded video travels as a separate ObjectRef."""

    key: int  # index of the prompt in the step's batch
    prompt_text: str


class RolloutGroup(msgspec.Struct):
    key: int
    response_ids: list[list[int]]  # without padding; includes EOS when the model stopped
    texts: list[str]
    logprobs: list[list[float]]  # per token, under the engine's raw policy (temperature 1)
    weight_version: int
    engine: str = ""
