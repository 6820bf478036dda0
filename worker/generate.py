"""Text generation over a step-function model: one token in, logits and the next state out.

A generative model's `config.json` names its four tensors in `generation` and lists its
vocabulary as the logits' `labels` (the text of each token id). `TextGenerator` feeds the prompt
in one executor call, then yields one token per executor call, so the event loop never blocks
and cancelling the consumer stops the work after the step in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.config import Generation, ModelConfig
from worker.errors import InferenceFailed, InvalidInput
from worker.runtimes import Runtime

__all__ = ["GenerateParams", "TextGenerator", "generation_problem"]

_MAX_STOP = 4


@dataclass(frozen=True, slots=True)
class GenerateParams:
    """What one generation asks for; `temperature` 0 is greedy (deterministic)."""

    prompt: str
    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, prompt: Any, parameters: Any, *, max_tokens: int, max_prompt: int) -> GenerateParams:
        """Checked parameters from a request (Triton's generate extension names); InvalidInput if wrong."""
        if not isinstance(prompt, str):
            raise InvalidInput("text_input must be a string")
        if len(prompt) > max_prompt:
            raise InvalidInput(f"prompt of {len(prompt)} characters is over the limit of {max_prompt}")
        params = parameters if isinstance(parameters, dict) else {}
        try:
            asked = int(params.get("max_tokens", 64))
            temperature = float(params.get("temperature", 0.0))
            top_k = int(params.get("top_k", 0))
            seed = params.get("seed")
            seed = None if seed is None else int(seed)
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(float("inf"))
            raise InvalidInput(f"bad generation parameter: {exc}") from exc
        stop = params.get("stop", [])
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > _MAX_STOP or not all(isinstance(s, str) and s for s in stop):
            raise InvalidInput(f"stop must be up to {_MAX_STOP} non-empty strings")
        if not 1 <= asked <= max_tokens:
            raise InvalidInput(f"max_tokens must be between 1 and {max_tokens}")
        if not (0.0 <= temperature <= 10.0) or top_k < 0:
            raise InvalidInput("temperature must be in [0, 10] and top_k >= 0")
        if seed is not None and seed < 0:  # numpy's generators take any non-negative integer
            raise InvalidInput("seed must be a non-negative integer")
        return cls(prompt, asked, temperature, top_k, seed, tuple(s[:64] for s in stop))


def generation_problem(config: ModelConfig) -> str | None:
    """Why this config cannot be generated from, or None when it can."""
    gen = config.generation
    if gen is None:
        return f"model {config.name!r} is not generative (its config has no `generation` section)"
    inputs = {spec.name: spec for spec in config.inputs}
    outputs = {spec.name: spec for spec in config.outputs}
    if gen.token_input not in inputs or gen.state_input not in inputs:
        return f"model {config.name!r}: generation names inputs the model does not have"
    if gen.logits_output not in outputs or gen.state_output not in outputs:
        return f"model {config.name!r}: generation names outputs the model does not have"
    if not config.labels:
        return f"model {config.name!r}: a generative model lists its vocabulary as labels"
    return None


class TextGenerator:
    """Generates text from one loaded step-function model."""

    def __init__(self, config: ModelConfig, runtime: Runtime, executor: Executor) -> None:
        problem = generation_problem(config)
        if problem is not None:
            raise InvalidInput(problem)
        assert config.generation is not None
        self.config = config
        self._gen: Generation = config.generation
        self._runtime = runtime
        self._executor = executor
        self._vocab = config.labels
        self._ids = {text: i for i, text in enumerate(self._vocab)}
        self._unknown = self._ids.get("?", 0)
        state_spec = next(spec for spec in config.inputs if spec.name == self._gen.state_input)
        self._state_shape = (1, *(1 if dim == -1 else dim for dim in state_spec.shape[1:]))

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(char, self._unknown) for char in text]

    def _step(self, token: int, state: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        out = self._runtime.run(
            {self._gen.token_input: np.array([[token]], dtype=np.int64), self._gen.state_input: state}
        )
        return out[self._gen.logits_output][0], np.asarray(out[self._gen.state_output], dtype=np.float32)

    def _prefill(self, tokens: list[int]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        state = np.zeros(self._state_shape, dtype=np.float32)
        logits = np.zeros(len(self._vocab), dtype=np.float32)
        for token in tokens:
            logits, state = self._step(token, state)
        return logits, state

    async def _run(self, func: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)
        except Exception as exc:  # the runtime's own failure
            raise InferenceFailed(f"model {self.config.name!r} failed: {type(exc).__name__}") from exc

    async def stream(self, params: GenerateParams) -> AsyncGenerator[str, None]:
        """The text of each new token, until `max_tokens` or a stop string; stops when cancelled."""
        # An empty prompt starts from a newline, the separator between topics in the training text.
        logits, state = await self._run(self._prefill, self.encode(params.prompt or "\n"))
        rng = np.random.default_rng(params.seed)
        produced = ""
        for _ in range(params.max_tokens):
            token = _sample(logits, params, rng)
            text = self._vocab[token]
            produced += text
            yield text
            if params.stop and any(produced.endswith(stop) for stop in params.stop):
                return
            logits, state = await self._run(self._step, token, state)


def _sample(logits: np.ndarray[Any, Any], params: GenerateParams, rng: np.random.Generator) -> int:
    if params.temperature == 0:
        return int(np.argmax(logits))
    with np.errstate(over="ignore", invalid="ignore"):  # a tiny temperature overflows: handled below
        scaled = logits.astype(np.float64) / params.temperature
        if 0 < params.top_k < scaled.size:
            cutoff = np.partition(scaled, -params.top_k)[-params.top_k]
            scaled = np.where(scaled >= cutoff, scaled, -np.inf)
        probs = np.exp(scaled - scaled.max())
        total = probs.sum()
    if not (np.isfinite(total) and total > 0):
        # logits / temperature overflowed (a temperature like 5e-324): the limit is the argmax.
        return int(np.argmax(logits))
    probs /= total
    return int(rng.choice(probs.size, p=probs))
