"""Message-shaped boundary between the verifier and a drafter.

The HSD loop only talks to a drafter through these calls and plain data, so the drafter can
live in the same process (CLI, tests, benchmarks) or in another node behind a ROS service.
Drafts are deterministic (each level proposes its most likely next token), which keeps
rejection sampling exact while a proposal carries only token ids.
"""
from dataclasses import dataclass, field
from typing import Protocol


class DrafterUnavailable(RuntimeError):
    """The drafter failed or missed its deadline; the verifier goes on by plain decoding."""


@dataclass
class DraftProposal:
    tokens: list[int] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)  # drafting level of each token: 0 n-gram, 1 model
    entropies: list[float] = field(default_factory=list)  # draft entropy per token, nan if unknown
    draft_s: float = 0.0  # time the drafter spent on this proposal
    level_s: list[float] = field(default_factory=list)  # of which each level's: [L0, L1]


@dataclass
class TargetCost:
    """What a verification step of the target costs: seconds of a one-row step, and the engine's
    curve (rows -> time of a step of that many rows / a one-row step, engines.characterize). The
    drafter weighs its options against it (draft_policy)."""

    row_s: float
    curve: dict


class Drafter(Protocol):
    def open(self, request_id: str, prompt_ids: list[int], target: TargetCost | None = None) -> None:
        """Start a request: the prompt (chat template and retrieved passages included)."""

    def propose(self, request_id: str, accepted_delta: list[int], max_tokens: int,
                target_row_s: float | None = None) -> DraftProposal:
        """Append the tokens committed since the last call, then propose up to max_tokens.
        target_row_s: the target's latest measured one-row step time."""

    def close(self, request_id: str) -> None:
        """Free the request's state, whatever its outcome."""
