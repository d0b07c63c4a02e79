"""TransformersEngine against a real (tiny, random-weight) Llama model on CPU.

Each test starts its own engine inside one asyncio.run, so a failing test cannot leave a thread or a
request behind for the next one. The model is built once per checkout into .local/models/tiny.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

from jobs.engine import (
    ChatTurn,
    Engine,
    EngineDead,
    FinishReason,
    GenerationRequest,
    GenerationUpdate,
    PromptTooLong,
    SamplingOptions,
)
from runner.engines.transformers_engine import TransformersEngine
from scripts.build_tiny_model import MAX_POSITION_EMBEDDINGS, ensure_model
from tests.engine_checks import check_stream, collect

pytestmark = [pytest.mark.timeout(60), pytest.mark.integration]  # a real model

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return ensure_model(REPO / ".local" / "models" / "tiny", "tiny")


def with_engine(model_dir: Path, body: Callable[[TransformersEngine], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        engine = TransformersEngine(model_dir, model_name="tiny-llama", device="cpu", **options)
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def request(rid: str, max_tokens: int = 16, temperature: float = 0.0, **kw: Any) -> GenerationRequest:
    sampling = SamplingOptions(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=kw.pop("top_p", 1.0),
        stop=kw.pop("stop", ()),
    )
    if "messages" not in kw:
        kw.setdefault("prompt", "The quick brown fox jumps over the lazy dog. Once upon a time")
    return GenerationRequest(request_id=rid, sampling=sampling, **kw)


async def assert_engine_idle(engine: TransformersEngine) -> None:
    """No stream open and no forward pass for a while: cancelled work really stopped in the engine."""
    assert engine.stats.running == 0
    # The generation thread applies a cancel at its next step; uncancelled, 1500 tokens take seconds.
    deadline = time.monotonic() + 3
    steps = engine.stats.forward_passes
    while True:
        await asyncio.sleep(0.3)
        if engine.stats.forward_passes == steps:
            return
        assert time.monotonic() < deadline, "engine still generating for a gone consumer"
        steps = engine.stats.forward_passes


def test_info_and_protocol(model_dir: Path) -> None:
    engine = TransformersEngine(model_dir, model_name="tiny-llama", device="cpu", max_concurrency=4)
    assert isinstance(engine, Engine)
    assert engine.info.model == "tiny-llama"
    assert engine.info.max_model_len == MAX_POSITION_EMBEDDINGS  # the model's own context
    assert engine.info.max_concurrency == 4
    with pytest.raises(EngineDead):  # not started yet
        asyncio.run(engine.check_health())


def test_completion_counts_and_length(model_dir: Path) -> None:
    async def body(engine: TransformersEngine) -> None:
        await engine.check_health()
        req = request("c1", max_tokens=16)
        final = check_stream(await collect(engine, req))
        assert final.finish_reason is FinishReason.LENGTH
        assert final.completion_tokens == 16
        assert final.prompt_tokens == len(engine._tokenizer(req.prompt)["input_ids"])
        assert final.text

    with_engine(model_dir, body)


def test_chat_uses_template(model_dir: Path) -> None:
    async def body(engine: TransformersEngine) -> None:
        turns = [ChatTurn("system", "You are terse."), ChatTurn("user", "What is the capital of Italy?")]
        final = check_stream(await collect(engine, request("chat1", max_tokens=12, messages=turns)))
        assert final.finish_reason is FinishReason.LENGTH and final.completion_tokens == 12
        rendered = engine._tokenizer.apply_chat_template(
            [{"role": t.role, "content": t.content} for t in turns], tokenize=False, add_generation_prompt=True
        )
        assert rendered.endswith("<|assistant|>\n")
        assert final.prompt_tokens == len(engine._tokenizer(rendered, add_special_tokens=False)["input_ids"])

    with_engine(model_dir, body)


def test_greedy_is_deterministic_and_sampling_runs(model_dir: Path) -> None:
    async def body(engine: TransformersEngine) -> None:
        first = (await collect(engine, request("g1", max_tokens=24)))[-1]
        second = (await collect(engine, request("g2", max_tokens=24)))[-1]
        assert first.text == second.text and first.completion_tokens == second.completion_tokens == 24
        sampled = check_stream(await collect(engine, request("s1", max_tokens=24, temperature=0.8, top_p=0.9)))
        assert sampled.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
        assert 0 < sampled.completion_tokens <= 24

    with_engine(model_dir, body)


def test_extreme_sampling_values_cannot_kill_the_engine(model_dir: Path) -> None:
    # Values the API accepts (a fuzzer found them): a vanishing temperature would divide the logits
    # into inf/NaN and crash the generation thread that every request shares.
    async def body(engine: TransformersEngine) -> None:
        greedy = (await collect(engine, request("g", max_tokens=12)))[-1]
        for i, (temperature, top_p) in enumerate([(5e-324, 1.0), (1e-300, 1e-300), (1e-6, 0.5), (2.0, 5e-324)]):
            last = check_stream(await collect(engine, request(f"x{i}", max_tokens=12, temperature=temperature,
                                                              top_p=top_p)))
            assert last.completion_tokens > 0
            if temperature < 1e-5:
                assert last.text == greedy.text  # as greedy
        await engine.check_health()

    with_engine(model_dir, body)


def test_concurrent_requests_share_forward_passes(model_dir: Path) -> None:
    n, max_tokens = 8, 32

    async def body(engine: TransformersEngine) -> None:
        before = engine.stats
        prompts = [f"Request number {i} asks about the weather in spring." for i in range(n)]
        results = await asyncio.gather(
            *(collect(engine, request(f"b{i}", max_tokens=max_tokens, prompt=p)) for i, p in enumerate(prompts))
        )
        finals = [check_stream(r) for r in results]
        assert all(f.finish_reason is FinishReason.LENGTH and f.completion_tokens == max_tokens for f in finals)
        after = engine.stats
        assert after.tokens_generated - before.tokens_generated == n * max_tokens
        steps = after.forward_passes - before.forward_passes
        # One-by-one would need n * max_tokens forward passes; batched they share steps.
        assert steps <= 2 * max_tokens, f"{steps} forward passes for {n}x{max_tokens} tokens: not batched"
        assert after.running == 0

    with_engine(model_dir, body, max_concurrency=n)


def test_abort_ends_with_partial_text_quickly(model_dir: Path) -> None:
    async def body(engine: TransformersEngine) -> None:
        seen: list[GenerationUpdate] = []
        abort_at: list[float] = []

        async def consume() -> None:
            async for update in engine.generate(request("long", max_tokens=1500)):
                seen.append(update)
                if len(seen) == 5:
                    abort_at.append(time.monotonic())
                    await engine.abort("long")

        await asyncio.wait_for(consume(), timeout=20)
        final = seen[-1]
        assert final.finish_reason is FinishReason.ABORT
        assert time.monotonic() - abort_at[0] < 1.0
        assert 5 <= final.completion_tokens < 1500
        # The final update carries the partial output (perhaps a token or two past the last one seen).
        assert final.text.startswith(seen[-2].text) and final.completion_tokens >= seen[-2].completion_tokens
        await assert_engine_idle(engine)
        await engine.abort("unknown-id")  # a no-op, not an error
        # The engine goes on serving, and the same id can be reused.
        again = check_stream(await collect(engine, request("long", max_tokens=4)))
        assert again.finish_reason is FinishReason.LENGTH

    with_engine(model_dir, body)


def test_closing_the_iterator_or_cancelling_the_task_cancels_in_engine(model_dir: Path) -> None:
    async def body(engine: TransformersEngine) -> None:
        stream = engine.generate(request("closed", max_tokens=1500))
        for _ in range(3):
            await stream.__anext__()
        await stream.aclose()
        await assert_engine_idle(engine)

        started = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.generate(request("cancelled", max_tokens=1500)):
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await assert_engine_idle(engine)

    with_engine(model_dir, body)


def test_prompt_too_long(model_dir: Path) -> None:
    async def body(engine: TransformersEngine) -> None:
        with pytest.raises(PromptTooLong):
            await collect(engine, request("big", max_tokens=MAX_POSITION_EMBEDDINGS - 8))
        with pytest.raises(PromptTooLong):
            await collect(engine, request("huge", max_tokens=1, prompt="word " * 6000))
        await engine.check_health()

    with_engine(model_dir, body)


def test_stop_string_truncates(model_dir: Path) -> None:
    async def body(engine: TransformersEngine) -> None:
        full = (await collect(engine, request("full", max_tokens=32)))[-1].text
        middle = len(full) // 2
        stop = full[middle : middle + 3]
        assert stop.strip() and "\ufffd" not in stop, f"pick another stop in {full!r}"
        final = check_stream(await collect(engine, request("stopped", max_tokens=32, stop=("zzz-never", stop))))
        assert final.finish_reason is FinishReason.STOP
        assert final.text == full[: full.find(stop)]
        assert final.completion_tokens < 32

    with_engine(model_dir, body)


def test_generation_thread_death_is_reported(model_dir: Path) -> None:
    async def body(engine: TransformersEngine) -> None:
        calls = 0

        def explode(*_: Any) -> None:
            nonlocal calls
            calls += 1
            if calls > 3:
                raise RuntimeError("simulated device failure")

        assert engine._manager is not None
        engine._manager.model.register_forward_pre_hook(explode)
        with pytest.raises(EngineDead):
            await collect(engine, request("doomed", max_tokens=64))
        with pytest.raises(EngineDead):
            await engine.check_health()
        with pytest.raises(EngineDead):
            await collect(engine, request("after", max_tokens=4))

    with_engine(model_dir, body)


def test_shutdown_aborts_inflight_and_leaves_no_threads(model_dir: Path) -> None:
    async def body(engine: TransformersEngine) -> None:
        updates: list[GenerationUpdate] = []

        async def consume() -> None:
            async for update in engine.generate(request("inflight", max_tokens=1500)):
                updates.append(update)

        task = asyncio.create_task(consume())
        while len(updates) < 3 and not task.done():
            await asyncio.sleep(0.01)
        await engine.shutdown()
        await asyncio.wait_for(task, timeout=5)
        assert updates[-1].finish_reason is FinishReason.ABORT
        with pytest.raises(EngineDead):
            await engine.check_health()

    def live_threads() -> set[threading.Thread]:  # other tests in the session may own threads of their own
        return {t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon}

    before = live_threads()
    with_engine(model_dir, body)  # with_engine shuts down a second time: that must be harmless
    leftover = live_threads() - before
    assert not leftover, leftover


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batched_generation(model_dir: Path) -> None:
    async def main() -> None:
        engine = await TransformersEngine.create(model_dir, device="cuda", max_concurrency=4)
        try:
            results = await asyncio.gather(*(collect(engine, request(f"gpu{i}", max_tokens=16)) for i in range(4)))
            assert all(check_stream(r).completion_tokens == 16 for r in results)
        finally:
            await engine.shutdown()

    asyncio.run(main())
