"""LLM engines behind the jobs.engine.Engine port. Only vllm_engine imports vllm."""

from __future__ import annotations

from jobs.engine import Engine
from runner.settings import RunnerSettings


async def start_engine(settings: RunnerSettings) -> Engine:
    """Build and load the configured engine (slow: loads the model)."""
    if settings.engine == "vllm":
        from runner.engines.vllm_engine import VllmEngine

        return await VllmEngine.start(settings)
    from runner.engines.transformers_engine import TransformersEngine

    return await TransformersEngine.create(
        settings.model_path,
        model_name=settings.model_name,
        device=settings.device,
        max_concurrency=settings.max_concurrency,
        max_model_len=settings.max_model_len,
    )
