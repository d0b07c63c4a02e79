"""What every engine behind the `Engine` port must do with a request's stream, checked the same way for each."""

from __future__ import annotations

import itertools

from jobs.engine import Engine, GenerationRequest, GenerationUpdate


async def collect(engine: Engine, req: GenerationRequest) -> list[GenerationUpdate]:
    return [update async for update in engine.generate(req)]


def check_stream(updates: list[GenerationUpdate]) -> GenerationUpdate:
    """Only the last update is final, counts only grow, and the text is cumulative. Returns the last one."""
    assert updates and updates[-1].finished
    assert not any(u.finished for u in updates[:-1])
    counts = [u.completion_tokens for u in updates]
    assert counts == sorted(counts)
    for before, after in itertools.pairwise(updates):
        assert after.text.startswith(before.text)
    return updates[-1]
