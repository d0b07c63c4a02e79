"""The deployment's models: which names a request may use and their limits."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelSpec(BaseModel):
    id: str = Field(min_length=1)
    max_model_len: int = Field(default=2048, ge=16)  # prompt + completion tokens
    max_tokens: int = Field(default=1024, ge=1)  # per-job completion cap (the runner's time budget)
    owned_by: str = "llmq"


class ModelCatalog:
    def __init__(self, models: list[ModelSpec]) -> None:
        if not models:
            raise ValueError("a deployment needs at least one model")
        self._models = {m.id: m for m in models}
        self.default = models[0]

    def resolve(self, name: str | None) -> ModelSpec | None:
        return self.default if name is None else self._models.get(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._models.values())

    def openai_list(self, created: int) -> dict[str, object]:
        return {
            "object": "list",
            "data": [
                {
                    "id": m.id,
                    "object": "model",
                    "created": created,
                    "owned_by": m.owned_by,
                    "max_model_len": m.max_model_len,
                    "max_tokens": m.max_tokens,
                }
                for m in self
            ],
        }
