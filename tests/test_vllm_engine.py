"""VllmEngine without vLLM: what these tests prove, and what they do not.

vLLM needs CUDA, so it is not installed here. The engine is built around an injected AsyncLLM and tokenizer, and
the few other vLLM pieces it uses (SamplingParams, the token prompt, the exception types) come through
`VllmBindings`. These tests inject test doubles, named Fake*, for all of them and prove the adapter's side of the
contract: which arguments it passes (max_tokens explicit, priority, stop, seed, the chat template call), how it
maps cumulative outputs and finish reasons, that closing or cancelling aborts, PromptTooLong and EngineDead.

They do NOT prove that real vLLM behaves like FakeAsyncLLM. That part rests on reading vLLM 0.33.0's source
(FakeAsyncLLM mirrors `AsyncLLM.generate`/`abort`/`check_health` there) and on scripts/check_vllm_engine.sh,
which type-checks the module against the real signatures (SamplingParams, AsyncEngineArgs, AsyncLLM, ...).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobs.engine import (
    ChatTurn,
    Engine,
    EngineDead,
    EngineError,
    EngineInfo,
    FinishReason,
    GenerationRequest,
    GenerationUpdate,
    PromptTooLong,
    SamplingOptions,
)
from runner.engines.vllm_engine import (
    VllmBindings,
    VllmEngine,
    engine_kwargs,
    sampling_kwargs,
)
from runner.settings import RunnerSettings

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[1]
STEP_S = 5  # a step that should take milliseconds; a regression fails here, not at the test timeout
T = TypeVar("T")

# Error texts copied from vLLM 0.33.0 (InputProcessor._validate_prompt_len, SamplingParams._verify_args).
VLLM_PROMPT_TOO_LONG = (
    "The decoder prompt (length 40) is longer than the maximum model length of 32. "
    "Make sure that `max_model_len` is no smaller than the number of text tokens."
)
VLLM_EMPTY_STOP = "stop cannot contain an empty string."


# ---------------------------------------------------------------------------------------------- test doubles


class FakeEngineDeadError(Exception):
    """Stands in for vllm.v1.engine.exceptions.EngineDeadError."""


class FakeVLLMValidationError(Exception):
    """Stands in for vllm.exceptions.VLLMValidationError (not a ValueError in vLLM 0.33)."""


@dataclass
class FakeCompletionOutput:
    """The fields of vllm.outputs.CompletionOutput that the engine reads."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class FakeRequestOutput:
    """The fields of vllm.outputs.RequestOutput that the engine reads."""

    request_id: str
    outputs: list[FakeCompletionOutput]
    finished: bool


@dataclass
class FakeGenerateCall:
    prompt: Any
    sampling_params: Any
    request_id: str
    priority: int


@dataclass
class FakeAsyncLLM:
    """A FAKE of vLLM's AsyncLLM, NOT the real engine (vLLM cannot run here). It imitates AsyncLLM 0.33.0 in
    CUMULATIVE output mode: `generate` is an async generator that yields each request's outputs from a queue and
    aborts the request when it is closed or cancelled; `abort` ends the stream with a final "abort" output
    carrying the text so far; `check_health` raises the dead error once `dead` is set.

    `script` lists (text, completion tokens, finish_reason) steps fed to every request at once; without one the
    test feeds outputs with `emit`. `reject` is raised from generate() before any output, `fail_after_script`
    after the scripted outputs (an engine dying mid-stream)."""

    script: Sequence[tuple[str, int, str | None]] = ()
    reject: BaseException | None = None
    fail_after_script: BaseException | None = None
    dead: bool = False
    errored_flag: bool = False
    calls: list[FakeGenerateCall] = field(default_factory=list)
    aborted: list[tuple[str, str]] = field(default_factory=list)  # (request id, "abort()" | "closed")
    shut_down: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)
    _queues: dict[str, asyncio.Queue[FakeRequestOutput | BaseException]] = field(default_factory=dict)
    _last: dict[str, FakeCompletionOutput] = field(default_factory=dict)

    @property
    def errored(self) -> bool:
        return self.dead or self.errored_flag

    async def generate(
        self, prompt: Any, sampling_params: Any, request_id: str, *, priority: int = 0
    ) -> AsyncIterator[FakeRequestOutput]:
        self.calls.append(FakeGenerateCall(prompt, sampling_params, request_id, priority))
        if self.dead:
            raise FakeEngineDeadError("EngineCore encountered an issue.")
        if self.reject is not None:
            raise self.reject
        queue: asyncio.Queue[FakeRequestOutput | BaseException] = asyncio.Queue()
        self._queues[request_id] = queue
        for text, tokens, reason in self.script:
            self.emit(request_id, text, tokens, reason)
        if self.fail_after_script is not None:
            queue.put_nowait(self.fail_after_script)
        self.started.set()
        try:
            while True:
                out = await queue.get()
                if isinstance(out, BaseException):
                    raise out
                yield out
                if out.finished:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append((request_id, "closed"))  # AsyncLLM.generate aborts on both
            raise
        finally:
            self._queues.pop(request_id, None)

    def emit(self, request_id: str, text: str, tokens: int, reason: str | None = None) -> None:
        completion = FakeCompletionOutput(text, list(range(tokens)), reason)
        self._last[request_id] = completion
        self._queues[request_id].put_nowait(FakeRequestOutput(request_id, [completion], reason is not None))

    async def abort(self, request_id: str | Iterable[str], internal: bool = False) -> None:
        for rid in [request_id] if isinstance(request_id, str) else list(request_id):
            self.aborted.append((rid, "abort()"))
            if rid in self._queues:
                last = self._last.get(rid, FakeCompletionOutput("", []))
                self.emit(rid, last.text, len(last.token_ids), "abort")

    async def check_health(self) -> None:
        if self.dead:
            raise FakeEngineDeadError("EngineCore encountered an issue.")

    def shutdown(self, timeout: float | None = None) -> None:
        self.shut_down = True


@dataclass
class FakeTokenizer:
    """Stands in for the model's tokenizer: one token per whitespace-separated word, BOS id 1 when special
    tokens are added, and a readable chat template. `gate`, when set, holds encode() until it is released."""

    chat_calls: list[dict[str, Any]] = field(default_factory=list)
    encode_calls: list[tuple[str, bool]] = field(default_factory=list)
    gate: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, tokenize: bool = True, add_generation_prompt: bool = False
    ) -> str:
        self.chat_calls.append(
            {"messages": messages, "tokenize": tokenize, "add_generation_prompt": add_generation_prompt}
        )
        text = "<s> " + " ".join(f"<|{m['role']}|> {m['content']}" for m in messages)
        return text + " <|assistant|>" if add_generation_prompt else text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.encode_calls.append((text, add_special_tokens))
        return ([1] if add_special_tokens else []) + [100 + i for i, _ in enumerate(text.split())]


FAKE_BINDINGS = VllmBindings(
    # The real argument builder: only SamplingParams(**kwargs) itself needs vLLM (checked by mypy, not here).
    sampling_params=sampling_kwargs,  # type: ignore[arg-type]
    token_prompt=lambda ids: {"type": "token", "prompt_token_ids": ids},  # what vllm.inputs.tokens_input returns
    engine_dead_error=FakeEngineDeadError,
    validation_errors=(FakeVLLMValidationError, ValueError),
)


def with_engine(
    body: Callable[[VllmEngine, FakeAsyncLLM, FakeTokenizer], Awaitable[T]],
    llm: FakeAsyncLLM | None = None,
    tokenizer: FakeTokenizer | None = None,
    max_model_len: int = 32,
) -> T:
    async def main() -> T:
        fake_llm = llm or FakeAsyncLLM()
        fake_tok = tokenizer or FakeTokenizer()
        info = EngineInfo(model="fake-model", max_model_len=max_model_len, max_concurrency=4)
        engine = VllmEngine(fake_llm, fake_tok, info, bindings=FAKE_BINDINGS)  # type: ignore[arg-type]
        try:
            return await body(engine, fake_llm, fake_tok)
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def request(
    rid: str = "job-1.delivery-a",
    *,
    prompt: str | None = "one two three",
    messages: list[ChatTurn] | None = None,
    max_tokens: int = 8,
    priority: int = 0,
    **sampling: Any,
) -> GenerationRequest:
    return GenerationRequest(
        request_id=rid,
        sampling=SamplingOptions(max_tokens=max_tokens, **sampling),
        prompt=None if messages is not None else prompt,
        messages=messages,
        priority=priority,
    )


async def collect(engine: VllmEngine, req: GenerationRequest) -> list[GenerationUpdate]:
    return [update async for update in engine.generate(req)]


# ---------------------------------------------------------------------------------------------- import


def test_importing_the_module_does_not_import_vllm() -> None:
    # In a fresh interpreter, with any vllm import made to fail, so the result does not depend on what is
    # installed or on what other tests imported.
    code = """
import sys

class NoVllm:
    def find_spec(self, name, path=None, target=None):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError(f"imported {name}")
        return None

sys.meta_path.insert(0, NoVllm())
import runner.engines.vllm_engine as m
from runner.engines import start_engine
assert m.VllmEngine and start_engine
leaked = sorted(n for n in sys.modules if n == "vllm" or n.startswith("vllm."))
assert not leaked, leaked
"""
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_engine_satisfies_the_port() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        assert isinstance(engine, Engine)
        assert engine.info.model == "fake-model"

    with_engine(body)


# ---------------------------------------------------------------------------------------------- arguments


def test_sampling_kwargs_are_explicit() -> None:
    kwargs = sampling_kwargs(SamplingOptions(max_tokens=5, temperature=0.3, top_p=0.9, stop=("\n\n", "END"), seed=7))
    assert kwargs == {"max_tokens": 5, "temperature": 0.3, "top_p": 0.9, "seed": 7, "stop": ["\n\n", "END"]}


def test_sampling_kwargs_defaults_and_edge_values() -> None:
    kwargs = sampling_kwargs(SamplingOptions(max_tokens=1))
    assert kwargs == {"max_tokens": 1, "temperature": 1.0, "top_p": 1.0, "seed": None, "stop": None}
    # vLLM reads -1 as "no seed"; an API seed of -1 must stay deterministic.
    assert sampling_kwargs(SamplingOptions(max_tokens=1, seed=-1))["seed"] == -(2**63)
    with pytest.raises(ValueError):
        sampling_kwargs(SamplingOptions(max_tokens=0))


def test_engine_kwargs_from_settings() -> None:
    settings = RunnerSettings(
        engine="vllm", model_path="/models/llama", model_name="llama-3", max_model_len=4096, max_concurrency=64
    )
    assert engine_kwargs(settings) == {
        "model": "/models/llama",
        "served_model_name": "llama-3",
        "max_model_len": 4096,
        "max_num_seqs": 64,
        "gpu_memory_utilization": 0.90,
        "scheduling_policy": "priority",
        "load_format": "auto",
    }


def test_engine_kwargs_honour_the_proposed_settings() -> None:
    class WithVllmSettings(RunnerSettings):  # the fields proposed for RunnerSettings
        gpu_memory_utilization: float = 0.8
        load_format: str = "runai_streamer"

    kwargs = engine_kwargs(WithVllmSettings(model_path="gs://bucket/models/llama"))
    assert kwargs["gpu_memory_utilization"] == 0.8
    assert kwargs["load_format"] == "runai_streamer"
    assert kwargs["model"] == "gs://bucket/models/llama"


def test_chat_request_goes_through_the_chat_template_with_its_options() -> None:
    messages = [ChatTurn("system", "be brief"), ChatTurn("user", "hi there")]
    req = request(messages=messages, max_tokens=5, priority=1, temperature=0.3, top_p=0.9, stop=("\n\n",), seed=7)

    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        updates = await collect(engine, req)
        assert tok.chat_calls == [
            {
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
                "tokenize": False,
                "add_generation_prompt": True,
            }
        ]
        rendered = "<s> <|system|> be brief <|user|> hi there <|assistant|>"
        assert tok.encode_calls == [(rendered, False)]  # the template wrote its own BOS
        expected_ids = [100 + i for i in range(len(rendered.split()))]
        (call,) = llm.calls
        assert call.prompt == {"type": "token", "prompt_token_ids": expected_ids}
        assert call.sampling_params == {
            "max_tokens": 5,
            "temperature": 0.3,
            "top_p": 0.9,
            "seed": 7,
            "stop": ["\n\n"],
        }
        assert call.priority == 1  # batch: runs after interactive (0) under the priority policy
        assert call.request_id == req.request_id
        assert updates[-1].prompt_tokens == len(expected_ids)

    with_engine(body, FakeAsyncLLM(script=[("ok", 1, "stop")]))


def test_completion_prompt_gets_special_tokens_and_default_priority() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        await collect(engine, request(prompt="one two three"))
        assert tok.encode_calls == [("one two three", True)]
        assert llm.calls[0].prompt["prompt_token_ids"] == [1, 100, 101, 102]
        assert llm.calls[0].priority == 0

    with_engine(body, FakeAsyncLLM(script=[("ok", 1, "stop")]))


# ---------------------------------------------------------------------------------------------- outputs


def test_updates_are_cumulative_and_the_last_one_finishes() -> None:
    script = [("Hel", 1, None), ("Hello", 2, None), ("Hello world", 3, "stop")]

    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        updates = await collect(engine, request(prompt="one two three"))
        assert updates == [
            GenerationUpdate("Hel", 4, 1, None),
            GenerationUpdate("Hello", 4, 2, None),
            GenerationUpdate("Hello world", 4, 3, FinishReason.STOP),
        ]
        assert [u.finished for u in updates] == [False, False, True]

    with_engine(body, FakeAsyncLLM(script=script))


@pytest.mark.parametrize(
    ("vllm_reason", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("abort", FinishReason.ABORT),
        ("repetition", FinishReason.STOP),
    ],
)
def test_finish_reasons_map_to_the_port(vllm_reason: str, expected: FinishReason) -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        updates = await collect(engine, request())
        assert updates[-1].finish_reason is expected

    with_engine(body, FakeAsyncLLM(script=[("a", 1, None), ("ab", 2, vllm_reason)]))


def test_a_request_level_error_is_an_engine_error_not_a_dead_engine() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        with pytest.raises(EngineError) as caught:
            await collect(engine, request())
        assert not isinstance(caught.value, EngineDead)
        await engine.check_health()  # still healthy

    with_engine(body, FakeAsyncLLM(script=[("a", 1, "error")]))


# ---------------------------------------------------------------------------------------------- abort


def test_closing_the_iterator_aborts_the_request_in_vllm() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        req = request()
        updates = engine.generate(req)
        first = await anext(updates)
        assert first.text == "a" and not first.finished
        await updates.aclose()
        assert llm.aborted == [(req.request_id, "closed")]

    with_engine(body, FakeAsyncLLM(script=[("a", 1, None)]))


def test_cancelling_the_consumer_aborts_the_request_in_vllm() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        req = request()
        task = asyncio.create_task(collect(engine, req))
        await asyncio.wait_for(llm.started.wait(), STEP_S)
        await asyncio.sleep(0.01)  # the consumer is now waiting for the next output
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert llm.aborted == [(req.request_id, "closed")]
        # The id is free again: nothing is left registered for it.
        llm.script = [("ok", 1, "stop")]
        assert (await collect(engine, req))[-1].finish_reason is FinishReason.STOP

    with_engine(body, FakeAsyncLLM(script=[("a", 1, None)]))


def test_abort_ends_the_stream_with_abort_and_the_partial_text() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        req = request()
        task = asyncio.create_task(collect(engine, req))
        await asyncio.wait_for(llm.started.wait(), STEP_S)
        await engine.abort(req.request_id)
        updates = await asyncio.wait_for(task, STEP_S)
        assert updates[-1] == GenerationUpdate("partial", 4, 2, FinishReason.ABORT)
        assert llm.aborted == [(req.request_id, "abort()")]

    with_engine(body, FakeAsyncLLM(script=[("partial", 2, None)]))


def test_abort_before_the_request_reaches_vllm() -> None:
    gate = threading.Event()

    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        req = request()
        task = asyncio.create_task(collect(engine, req))
        await asyncio.to_thread(tok.entered.wait, STEP_S)  # the prompt is being tokenized
        await engine.abort(req.request_id)
        gate.set()
        assert await asyncio.wait_for(task, STEP_S) == [GenerationUpdate("", 4, 0, FinishReason.ABORT)]
        assert llm.calls == []

    with_engine(body, tokenizer=FakeTokenizer(gate=gate))


def test_abort_of_an_unknown_request_is_a_no_op() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        await engine.abort("nobody")
        assert llm.aborted == []

    with_engine(body)


def test_a_duplicate_running_request_id_is_refused() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        req = request()
        updates = engine.generate(req)
        await anext(updates)
        with pytest.raises(ValueError, match="already running"):
            await collect(engine, req)
        await updates.aclose()

    with_engine(body, FakeAsyncLLM(script=[("a", 1, None)]))


# ---------------------------------------------------------------------------------------------- prompt length


def test_prompt_plus_max_tokens_over_the_context_is_refused_before_vllm() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        # 1 BOS + 10 words = 11 prompt tokens
        ten_words = " ".join(["w"] * 10)
        with pytest.raises(PromptTooLong, match="exceeds max_model_len"):
            await collect(engine, request(prompt=ten_words, max_tokens=6))  # 17 > 16
        assert llm.calls == []
        llm.script = [("ok", 1, "stop")]
        await collect(engine, request(prompt=ten_words, max_tokens=5))  # 16 fits exactly
        assert len(llm.calls) == 1

    with_engine(body, max_model_len=16)


def test_vllm_length_validation_error_becomes_prompt_too_long() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        with pytest.raises(PromptTooLong, match="maximum model length"):
            await collect(engine, request())

    with_engine(body, FakeAsyncLLM(reject=FakeVLLMValidationError(VLLM_PROMPT_TOO_LONG)))


def test_other_vllm_validation_errors_propagate_unchanged() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        with pytest.raises(FakeVLLMValidationError, match="empty string"):
            await collect(engine, request())

    with_engine(body, FakeAsyncLLM(reject=FakeVLLMValidationError(VLLM_EMPTY_STOP)))


# ---------------------------------------------------------------------------------------------- dead engine


def test_engine_dead_error_mid_stream_becomes_engine_dead() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        seen: list[GenerationUpdate] = []
        with pytest.raises(EngineDead):
            async for update in engine.generate(request()):
                seen.append(update)
        assert [u.text for u in seen] == ["a"]

    with_engine(body, FakeAsyncLLM(script=[("a", 1, None)], fail_after_script=FakeEngineDeadError("core died")))


def test_a_dead_engine_fails_health_and_new_requests() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        await engine.check_health()
        llm.dead = True
        with pytest.raises(EngineDead):
            await engine.check_health()
        with pytest.raises(EngineDead):
            await collect(engine, request())

    with_engine(body)


def test_an_unexpected_error_is_engine_dead_only_if_vllm_errored() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        llm.reject = RuntimeError("EngineGenerateError")
        with pytest.raises(RuntimeError):
            await collect(engine, request("r1"))
        llm.errored_flag = True
        with pytest.raises(EngineDead):
            await collect(engine, request("r2"))

    with_engine(body)


def test_shutdown_aborts_running_requests_and_stops_vllm() -> None:
    async def body(engine: VllmEngine, llm: FakeAsyncLLM, tok: FakeTokenizer) -> None:
        req = request()
        task = asyncio.create_task(collect(engine, req))
        await asyncio.wait_for(llm.started.wait(), STEP_S)
        await engine.shutdown()
        assert (await asyncio.wait_for(task, STEP_S))[-1].finish_reason is FinishReason.ABORT
        assert llm.aborted == [(req.request_id, "abort()")]
        assert llm.shut_down
        with pytest.raises(EngineDead):
            await engine.check_health()

    with_engine(body)
