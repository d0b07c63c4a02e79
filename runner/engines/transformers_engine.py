"""Engine port adapter over Hugging Face transformers' continuous batching (CPU or one GPU).

Batching is transformers' own `ContinuousBatchingManager` (`model.init_continuous_batching`): one background
thread runs a paged-KV-cache scheduler, requests join and leave between forward steps, and streamed outputs are
handed to this event loop through `register_result_handler`. It runs on CPU with `attn_implementation="sdpa"`
(on CUDA the manager switches to flash attention itself when it is installed).

Sampling limits (what the manager allows, per request):
  - temperature and top_p are honoured per request (per-request logits processors);
  - temperature 0 is greedy, done as top_k=1 because `do_sample` is one switch for the whole batch;
  - `seed` is NOT honoured per request: the whole batch samples from torch's global generator, which the
    engine-wide `seed` option seeds once at start; sampled output then depends on what else is batched.
    Greedy output is repeatable;
  - `priority` is ignored: the manager's scheduler is FIFO.
The engine must be used from one event loop that outlives it: outputs are posted to the loop that called
generate(), and a closed loop there would crash the generation thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching import ContinuousBatchingManager, RequestStatus
from transformers.generation.continuous_batching.requests import GenerationOutput

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
)

logger = logging.getLogger(__name__)

_HEALTH_POLL_S = 0.5  # a waiting generate() re-checks the thread this often, in case it died silently
_GREEDY_BELOW = 1e-5  # temperatures below this sample greedily
_PAGE_SIZE = 256  # tokens per KV-cache page; transformers' default


class _DropPsutilNoise(logging.Filter):
    """Without psutil transformers logs an ERROR sizing the CPU cache; we size it ourselves, so it is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "psutil" not in record.getMessage()


logging.getLogger("ContinuousBatchingLogger").addFilter(_DropPsutilNoise())


@dataclass(slots=True)
class _Stream:
    """One generation's mailbox. Outputs are cumulative, so only the newest matters: a slow consumer gets
    fewer, bigger updates instead of a backlog (and fewer full re-decodes of the text)."""

    internal_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    latest: GenerationOutput | None = None
    aborted: bool = False
    tokens_seen: int = 0

    def deliver(self, output: GenerationOutput) -> None:  # called on the event loop by the manager
        self.latest = output
        self.wake.set()

    def abort(self) -> None:
        self.aborted = True
        self.wake.set()


class TransformersEngine:
    """`jobs.engine.Engine` on transformers continuous batching. Call `await start()` before use."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        model_name: str | None = None,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        max_concurrency: int = 8,
        max_model_len: int | None = None,
        seed: int | None = None,
        kv_cache_blocks: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        self._path = Path(model_path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self._dtype = dtype
        # The config is a small JSON file: reading it here lets `info` work before start().
        config = AutoConfig.from_pretrained(self._path)
        model_max = int(getattr(config, "max_position_embeddings", 2048))
        self._info = EngineInfo(
            model=model_name or self._path.name,
            max_model_len=min(max_model_len, model_max) if max_model_len else model_max,
            max_concurrency=max_concurrency,
            extra={"engine": "transformers", "device": self._device.type},
        )
        on_cpu = self._device.type == "cpu"
        # Without psutil transformers cannot size the cache from host RAM, and 60% of RAM is far too much
        # anyway, so on CPU the cache holds exactly max_concurrency full-length sequences. On GPU: auto-sized.
        if kv_cache_blocks is None and on_cpu:
            kv_cache_blocks = math.ceil(max_concurrency * self._info.max_model_len / _PAGE_SIZE) + 1
        self._cb_config = ContinuousBatchingConfig(
            page_size=_PAGE_SIZE,
            num_blocks=kv_cache_blocks,
            max_batch_tokens=max_batch_tokens or (512 if on_cpu else None),
            max_requests_per_batch=max_concurrency,
            per_request_processors=True,
            seed=seed,
        )
        self._tokenizer: Any = None
        self._manager: ContinuousBatchingManager | None = None
        self._eos_ids: list[int] = []
        self._vocab_size = 0  # logits width: top_k must not exceed it
        self._streams: dict[str, _Stream] = {}
        self._ids = itertools.count()
        self._hook: Any = None
        self._forward_passes = 0
        self._requests_started = 0
        self._tokens_generated = 0
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def create(cls, model_path: str | Path, **options: Any) -> TransformersEngine:
        engine = cls(model_path, **options)
        await engine.start()
        return engine

    async def start(self) -> None:
        """Load the model and start the generation thread, off the event loop (loading takes seconds)."""
        if self._manager is not None:
            return
        await asyncio.to_thread(self._load_and_start)
        logger.info("transformers engine started: %s on %s", self._info.model, self._device)

    def _load_and_start(self) -> None:
        tokenizer = AutoTokenizer.from_pretrained(self._path)
        dtype = self._dtype
        if dtype == "auto":
            # bf16 on CPU is slower than fp32 for small models; on GPU take the checkpoint's own dtype.
            dtype = torch.float32 if self._device.type == "cpu" else "auto"
        # Loaded on CPU then moved: `device_map` needs `accelerate`, not a dependency here.
        model = AutoModelForCausalLM.from_pretrained(self._path, dtype=dtype, attn_implementation="sdpa")
        model.to(self._device).eval()  # type: ignore[arg-type]  # transformers types `to` oddly
        self._vocab_size = int(model.get_output_embeddings().out_features)

        gen = GenerationConfig.from_dict(model.generation_config.to_dict())
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self._eos_ids = [eos] if isinstance(eos, int) else [int(e) for e in (eos or [])]
        # Per-request processors only exist if the defaults are "active" (temperature != 1, top_k set,
        # top_p < 1); each request passes its own values, so these defaults are never used for sampling.
        gen.update(
            do_sample=True, temperature=0.5, top_k=self._vocab_size, top_p=0.99, eos_token_id=self._eos_ids or -1
        )
        # Counting forward calls is the observable proof of batching (and a cheap metric).
        self._hook = model.register_forward_pre_hook(self._count_forward)
        manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=self._cb_config)
        manager.start()
        self._tokenizer, self._manager = tokenizer, manager

    def _count_forward(self, *_: Any) -> None:
        self._forward_passes += 1

    async def shutdown(self) -> None:
        """Abort what is running and stop the generation thread (joined, so no thread is left behind)."""
        manager, self._manager, self._stopping = self._manager, None, True
        for stream in list(self._streams.values()):
            stream.abort()
        if manager is None:  # never started, or already shut down
            return
        # A hard stop fails leftover requests at once instead of finishing them (our streams already ended).
        await asyncio.to_thread(manager.stop, block=True, timeout=30, hard_stop=True)
        if manager.is_running():
            logger.error("generation thread did not stop within 30 s")
        manager.destroy()
        if self._hook is not None:
            self._hook.remove()
        logger.info("transformers engine stopped")

    # ------------------------------------------------------------------ port

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def stats(self) -> EngineStats:
        return EngineStats(
            forward_passes=self._forward_passes,
            requests_started=self._requests_started,
            tokens_generated=self._tokens_generated,
            running=len(self._streams),
        )

    async def check_health(self) -> None:
        reason = self._dead_reason()
        if reason is not None:
            raise EngineDead(reason)

    def _dead_reason(self) -> str | None:
        manager = self._manager
        if self._stopping:
            return "engine is shut down"
        if manager is None:
            return "engine not started"
        error = manager.background_thread_status.fatal_error
        if error is not None:
            return f"generation thread failed: {error!r}"
        if not manager.is_running():
            return "generation thread exited"
        return None

    async def abort(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            self._cancel(stream)
            stream.abort()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationUpdate, None]:
        await self.check_health()
        manager, sampling = self._manager, request.sampling
        assert manager is not None  # check_health guarantees it
        if sampling.max_tokens < 1:
            raise RequestRejected("max_tokens must be at least 1")
        if sampling.presence_penalty or sampling.frequency_penalty:
            # Its continuous-batching generation has no OpenAI-style penalties: refused, never ignored.
            raise RequestRejected("presence_penalty and frequency_penalty are not supported by this engine")
        if sampling.json_schema is not None or sampling.json_object:
            raise RequestRejected("response_format json_object / json_schema needs the vLLM engine")
        if request.request_id in self._streams:
            raise ValueError(f"request {request.request_id!r} is already running")
        prompt_ids = self._encode(request)
        if len(prompt_ids) + sampling.max_tokens > self._info.max_model_len:
            raise PromptTooLong(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({sampling.max_tokens}) exceeds "
                f"max_model_len ({self._info.max_model_len})"
            )
        # Internal ids are unique, so a retried request id never collides with a cancel still in flight.
        stream = _Stream(f"{request.request_id}#{next(self._ids)}")
        manager.register_result_handler(stream.internal_id, stream.deliver)
        # As vLLM does (_SAMPLING_EPS): a temperature this small is greedy. Dividing logits by it
        # gives inf/NaN probabilities, which crash the shared generation thread for every request.
        greedy = sampling.temperature < _GREEDY_BELOW
        accepted = manager.add_request(
            prompt_ids,
            request_id=stream.internal_id,
            max_new_tokens=sampling.max_tokens,
            streaming=True,
            eos_token_id=self._eos_ids or -1,
            temperature=1.0 if greedy else float(sampling.temperature),
            top_k=1 if greedy else self._vocab_size,
            top_p=1.0 if greedy else float(sampling.top_p),
        )
        if accepted is None:
            self._drop_handler(stream.internal_id)
            raise EngineDead(self._dead_reason() or "engine refused the request")
        self._streams[request.request_id] = stream
        self._requests_started += 1
        last = GenerationUpdate(text="", prompt_tokens=len(prompt_ids), completion_tokens=0)
        finished = False
        try:
            while True:
                try:
                    await asyncio.wait_for(stream.wake.wait(), timeout=_HEALTH_POLL_S)
                except TimeoutError:
                    await self.check_health()
                    continue
                stream.wake.clear()
                output, stream.latest = stream.latest, None
                if output is not None and output.status == RequestStatus.FAILED:
                    if not stream.aborted:  # shutdown's hard stop fails aborted requests: not an error
                        raise await self._failure(output.error)
                    output = None
                if output is not None:
                    last = self._to_update(output, stream, len(prompt_ids), sampling.stop)
                    if last.finish_reason is FinishReason.STOP and not output.is_finished():
                        self._cancel(stream)  # a stop string matched: the engine need not go on
                if stream.aborted and not last.finished:
                    last = _with(last, FinishReason.ABORT)
                finished = last.finished
                if output is not None or finished:
                    yield last
                if finished:
                    return
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:  # the consumer went away (aclose or task cancelled)
                self._cancel(stream)

    # ------------------------------------------------------------------ helpers

    def _encode(self, request: GenerationRequest) -> list[int]:
        tok = self._tokenizer
        if request.messages is not None:
            turns = [{"role": t.role, "content": t.content} for t in request.messages]
            text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            # The template writes its own BOS; adding special tokens again would double it.
            return list(tok(text, add_special_tokens=False)["input_ids"])
        if request.prompt is None:
            raise RequestRejected("a request needs a prompt or messages")
        return list(tok(request.prompt)["input_ids"])

    def _to_update(
        self, output: GenerationOutput, stream: _Stream, prompt_tokens: int, stops: tuple[str, ...]
    ) -> GenerationUpdate:
        tokens = output.generated_tokens
        self._tokens_generated += len(tokens) - stream.tokens_seen
        stream.tokens_seen = len(tokens)
        text = self._tokenizer.decode(tokens, skip_special_tokens=True)
        # OpenAI semantics: cut at the earliest stop string, which is itself not returned.
        cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
        if cut >= 0:
            return GenerationUpdate(text[:cut], prompt_tokens, len(tokens), FinishReason.STOP)
        if output.is_finished():
            reason = FinishReason.STOP if tokens and tokens[-1] in self._eos_ids else FinishReason.LENGTH
            return GenerationUpdate(text, prompt_tokens, len(tokens), reason)
        # Hold back what a later token may still change, so streamed text never shrinks: a trailing partial
        # UTF-8 character, and (like vLLM) the last len(stop)-1 characters, which may begin a stop string.
        held = max((len(s) for s in stops), default=1) - 1
        text = text.rstrip("\ufffd")
        return GenerationUpdate(text[: len(text) - held], prompt_tokens, len(tokens))

    async def _failure(self, error: str | None) -> EngineError:
        # A crashing generation loop fails its requests just before it records the fatal error, so give it a
        # moment: a failure with the thread still healthy afterwards is this request's own (e.g. bad kwargs).
        for _ in range(20):
            reason = self._dead_reason()
            if reason is not None:
                return EngineDead(f"{reason}; request failed: {error}")
            await asyncio.sleep(0.05)
        return EngineError(error or "generation failed")

    def _cancel(self, stream: _Stream) -> None:
        if self._manager is not None and not self._stopping:
            self._manager.cancel_request(stream.internal_id)
        self._drop_handler(stream.internal_id)

    def _drop_handler(self, internal_id: str) -> None:
        # The manager only unregisters a handler when its request finishes; a cancelled request never does,
        # so drop it here (there is no public API), then discard outputs that arrive after it (no handler).
        manager = self._manager
        if manager is None:
            return
        router = manager.output_router
        with router._lock:
            router.result_handlers.pop(internal_id, None)
        while manager.get_result(timeout=0) is not None:
            pass


def _with(update: GenerationUpdate, reason: FinishReason) -> GenerationUpdate:
    return GenerationUpdate(update.text, update.prompt_tokens, update.completion_tokens, reason)
