"""A view and its prompt that fit the model's context, not only the view's budget.

The view's budget (``LOOPSIM_VIEW_TOKEN_BUDGET``) bounds the record's share; the persona,
the framing and the instructions come on top, and for the embedded model the reply must
fit in the same context too. :func:`fit_prompt` builds the view, builds the prompt around
it, counts the whole prompt as the model will see it (chat template included), and while
it is over the limit builds the view again with the room the rest of the prompt leaves,
rounded down to a step of 64 tokens.

Equal records still give equal prompts: the budget each try uses is a pure function of
the record, the counter and the limit. The rest of the prompt is nearly the same every
day, so the fitted budget is too, and the view keeps a prefix the model's cache can reuse.
"""

from __future__ import annotations

from collections.abc import Callable

from loopsim.chat.tokens import TokenCounter
from loopsim.researcher.prompts import Prompt

# Rebuilds before the smallest prompt is sent as it is: only pinned parts (the charter and
# corrections) too long for the context can leave a prompt over the limit after these.
TRIES = 4
STEP = 64


def fit_prompt(
    build: Callable[[int], tuple[Prompt, int]],
    counter: TokenCounter,
    budget: int,
    limit: int | None,
) -> Prompt:
    """The prompt ``build(budget)`` makes, with ``budget`` cut until the whole prompt,
    as ``counter`` counts it, takes at most ``limit`` tokens (None: no limit is known,
    and the budget alone holds). ``build`` returns the prompt and the tokens its
    budgeted part (the view, a digest's material) used."""
    prompt, used = build(budget)
    if limit is None:
        return prompt
    for _ in range(TRIES):
        whole = counter.count_prompt(prompt.messages)
        if whole <= limit or budget <= 0:
            break
        # The room the rest of the prompt (persona, instructions, template) leaves, in
        # whole steps: the same from one day to the next, so the view keeps its shape
        # and the prompt's prefix stays cacheable. Each try takes at least a step off.
        frame = whole - used
        budget = max(0, min(budget - STEP, (limit - frame) // STEP * STEP))
        prompt, used = build(budget)
    return prompt
