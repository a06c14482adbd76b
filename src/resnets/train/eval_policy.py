"""When a run evaluates which split: the evaluation policy, as pure functions of the step.

A run has *evaluation points*: every `eval_every` steps (0: at the end of every epoch) and at
its last step. A checkpoint (`last.pt`) is written at each point. Which held-out splits are
evaluated there is each split's policy (`eval_val`, `eval_test` in the config):

  every  at every evaluation point (a curve: a study's Figure 6 draws the test error's)
  end    at the last step only (one final figure: all the quickstart reports; evaluating the
         test split once is also the honest use of a test split)

A split a dataset does not have is never evaluated. Nothing here touches a model: the loop
asks `splits_due(step)` and the tests count evaluations without training anything.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

POLICIES = ("every", "end")  # the values of eval_val and eval_test
SPLITS = ("val", "test")  # held-out splits, in the order they are evaluated


def evaluation_point(step: int, *, total_steps: int, every: int) -> bool:
    """Whether the update numbered `step` (counted from 1 once done) ends at an evaluation
    point: a multiple of `every` steps, or the last step."""
    return step % every == 0 or step == total_steps


def splits_due(step: int, *, total_steps: int, every: int, policies: dict[str, str],
               available: Iterable[str] = SPLITS) -> list[str]:
    """The splits evaluated after update `step`: at an evaluation point, those of `available`
    whose policy is "every", and at the last step every available split. `policies` maps a
    split to "every" or "end" (a split it does not name: "every")."""
    if not evaluation_point(step, total_steps=total_steps, every=every):
        return []
    last = step == total_steps
    for split in available:
        if policies.get(split, "every") not in POLICIES:
            raise ValueError(f"unknown evaluation policy {policies[split]!r} for {split}; "
                             f"valid: {', '.join(POLICIES)}")
    return [split for split in SPLITS if split in set(available)
            and (last or policies.get(split, "every") == "every")]


def count_evaluations(*, total_steps: int, every: int, policies: dict[str, str],
                      available: Iterable[str] = SPLITS, start_step: int = 0) -> Counter:
    """How many times each split is evaluated in steps start_step+1 .. total_steps (the
    work a run's evaluations cost, without running it)."""
    available = list(available)
    counts: Counter = Counter()
    for step in range(start_step + 1, total_steps + 1):
        counts.update(splits_due(step, total_steps=total_steps, every=every,
                                 policies=policies, available=available))
    return counts
