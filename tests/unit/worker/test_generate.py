"""Text generation over the bundled step-function model (charlm), with both of its runtimes."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from worker.bundled import bundled_models
from worker.config import load_config
from worker.errors import InvalidInput
from worker.generate import GenerateParams, TextGenerator, generation_problem
from worker.repository import ModelRepository
from worker.streaming import generators_for

RUNTIMES = ["charlm", pytest.param("charlm_torchscript", marks=pytest.mark.torch)]


@pytest.fixture(scope="module")
def generators() -> Iterator[dict[str, TextGenerator]]:
    repository = ModelRepository.load(bundled_models(), threads=1, only=frozenset({"charlm", "charlm_torchscript"}))
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield generators_for(repository, executor)
    repository.close()


async def generate(generator: TextGenerator, params: GenerateParams) -> str:
    return "".join([token async for token in generator.stream(params)])


@pytest.mark.parametrize("name", RUNTIMES)
async def test_greedy_text_is_learned_english_and_the_same_in_both_runtimes(
    generators: dict[str, TextGenerator], name: str
) -> None:
    text = await generate(generators[name], GenerateParams("The return statement", max_tokens=60))
    reference = await generate(generators["charlm"], GenerateParams("The return statement", max_tokens=60))
    assert len(text) == 60
    assert text == reference
    words = text.split()
    assert sum(word.strip(".,") in {"the", "is", "a", "of", "in", "function", "object"} for word in words) >= 3


async def test_sampling_is_reproducible_with_a_seed_and_stops_on_stop_strings(
    generators: dict[str, TextGenerator],
) -> None:
    generator = generators["charlm"]
    params = GenerateParams("def ", max_tokens=80, temperature=0.8, top_k=20, seed=42)
    assert await generate(generator, params) == await generate(generator, params)
    stopped = await generate(generator, GenerateParams("The", max_tokens=200, stop=(" ",)))
    assert stopped.endswith(" ")
    assert stopped.count(" ") == 1


async def test_closing_the_stream_stops_generation(generators: dict[str, TextGenerator]) -> None:
    stream = generators["charlm"].stream(GenerateParams("x", max_tokens=4000))
    first = [await anext(stream) for _ in range(3)]
    await stream.aclose()
    assert len(first) == 3
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


@pytest.mark.parametrize(
    ("prompt", "parameters", "words"),
    [
        (3, {}, "text_input"),
        ("x" * 20, {}, "over the limit"),
        ("hi", {"max_tokens": 0}, "max_tokens"),
        ("hi", {"max_tokens": 10_000}, "max_tokens"),
        ("hi", {"temperature": -1}, "temperature"),
        ("hi", {"temperature": "hot"}, "bad generation parameter"),
        ("hi", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("hi", {"stop": [""]}, "stop"),
        ("hi", {"seed": -1}, "seed"),
        ("hi", {"max_tokens": float("inf")}, "bad generation parameter"),
        ("hi", {"seed": float("inf")}, "bad generation parameter"),
        ("hi", {"top_k": 1e400}, "bad generation parameter"),
    ],
)
def test_bad_parameters_are_invalid_input(prompt: object, parameters: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        GenerateParams.parse(prompt, parameters, max_tokens=100, max_prompt=10)


def test_only_configs_with_a_valid_generation_section_generate() -> None:
    digits = load_config(bundled_models() / "digits" / "config.json")
    assert "not generative" in str(generation_problem(digits))
    charlm = load_config(bundled_models() / "charlm" / "config.json")
    assert generation_problem(charlm) is None
    assert charlm.generation is not None
    broken = charlm.model_copy(update={"generation": charlm.generation.model_copy(update={"state_input": "nope"})})
    assert "inputs the model does not have" in str(generation_problem(broken))


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-30])
async def test_a_vanishing_temperature_is_greedy(generators: dict[str, TextGenerator], temperature: float) -> None:
    """logits / 5e-324 overflows to inf (and NaN probabilities, which numpy refuses): the limit is argmax."""
    generator = generators["charlm"]
    greedy = await generate(generator, GenerateParams("The return statement", max_tokens=8))
    tiny = GenerateParams("The return statement", max_tokens=8, temperature=temperature, seed=1)
    assert await generate(generator, tiny) == greedy


def test_any_non_negative_seed_is_taken() -> None:
    for seed in (0, 2**64, 2**70):
        assert GenerateParams.parse("hi", {"seed": seed}, max_tokens=100, max_prompt=10).seed == seed
