"""The deployment's models: which names a request may use and their limits. Aliases are names of the
deployment's choice for its models (OpenAI's model names, say, so that an OpenAI program or batch file runs
unchanged); a job records the model it resolves to, never the alias."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelSpec(BaseModel):
    id: str = Field(min_length=1)
    max_model_len: int = Field(default=2048, ge=16)  # prompt + completion tokens
    max_tokens: int = Field(default=1024, ge=1)  # per-job completion cap (the runner's time budget)
    owned_by: str = "llmq"


class ModelCatalog:
    def __init__(self, models: list[ModelSpec], aliases: dict[str, str] | None = None) -> None:
        if not models:
            raise ValueError("a deployment needs at least one model")
        self._models = {m.id: m for m in models}
        self.default = models[0]
        self.aliases = dict(aliases or {})
        for alias, target in self.aliases.items():
            if target not in self._models:
                raise ValueError(f"model alias {alias!r} names {target!r}, which is not served")
            if alias in self._models:
                raise ValueError(f"model alias {alias!r} is the id of a served model")

    def resolve(self, name: str | None) -> ModelSpec | None:
        if name is None:
            return self.default
        return self._models.get(self.aliases.get(name, name))

    def names(self) -> str:
        """What a request may name, for a 400 that says so."""
        served = ", ".join(self._models)
        aliases = ", ".join(f"{a} (= {t})" for a, t in self.aliases.items())
        return served + (f"; aliases: {aliases}" if aliases else "")

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._models.values())

    def openai_list(self, created: int) -> dict[str, object]:
        def entry(name: str, m: ModelSpec) -> dict[str, object]:
            described: dict[str, object] = {"id": name, "object": "model", "created": created, "owned_by": m.owned_by,
                                            "max_model_len": m.max_model_len, "max_tokens": m.max_tokens}
            if name != m.id:
                described["alias_of"] = m.id
            return described

        return {"object": "list",
                "data": [entry(m.id, m) for m in self]
                + [entry(alias, self._models[target]) for alias, target in self.aliases.items()]}
