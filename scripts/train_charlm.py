"""Train the bundled generative model: a character-level GRU on the Python docs that ship with Python.

The text is `pydoc_data.topics` (the help() topics of the running interpreter: ~465 KB, no
downloads). The model is exported as a *step function with explicit state*, so any runtime can
stream it token by token::

    (token INT64 [B, 1], state FP32 [B, H])  ->  (logits FP32 [B, V], next_state FP32 [B, H])

Writes two folders of a KServe-v2-style model repository (default ``worker/bundled_models/``)::

    charlm/model.onnx                runtime "onnx"
    charlm_torchscript/model.pt      runtime "torchscript", same weights

Each `config.json` carries a `generation` section naming the four tensors; the logits' `labels`
are the vocabulary (one character each). Before the script succeeds, both exports are checked
against the eager model over a whole sequence. Reruns are deterministic: fixed seeds, one CPU
thread, deterministic algorithms, a fixed held-out tail of the text.

    python scripts/train_charlm.py [--out DIR] [--steps N] [--metrics FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "worker" / "bundled_models"
DEFAULT_METRICS = REPO_ROOT / "scripts" / "charlm_metrics.json"
# Newline plus printable ASCII; other characters are folded onto their ASCII look-alikes or "?".
VOCABULARY = "\n" + "".join(chr(code) for code in range(32, 127))
FOLD = {
    "\u201c": '"',  # curly double quotes
    "\u201d": '"',
    "\u2018": "'",  # curly single quotes
    "\u2019": "'",
    "\u2014": "-",  # em dash
    "\u2013": "-",  # en dash
    "\u2026": "...",  # ellipsis
    "\t": "    ",
}
EMBED, HIDDEN = 32, 192
SEQ_LEN, BATCH = 128, 64
SEED = 0
TOLERANCE = 1e-4
MAX_BATCH = 64


def corpus() -> str:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key].strip() for key in sorted(topics))
    for char, ascii_text in FOLD.items():
        text = text.replace(char, ascii_text)
    return "".join(char if char in VOCABULARY else "?" for char in text)


def encode(text: str) -> np.ndarray:
    index = {char: i for i, char in enumerate(VOCABULARY)}
    return np.fromiter((index[char] for char in text), dtype=np.int64, count=len(text))


class CharLM(nn.Module):
    """The training form: a whole sequence at once through nn.GRU."""

    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, last = self.rnn(self.embed(tokens), None if state is None else state[None])
        return self.head(out), last[0]


class Step(nn.Module):
    """The serving form: one token and the state in, logits and the next state out.

    The embedding is folded into the GRU's input projection (a [V, 3H] table), and the GRU
    equations are written out, so that every exporter sees plain gathers, matmuls and
    elementwise ops (PyTorch's gate order: reset, update, new).
    """

    def __init__(self, lm: CharLM) -> None:
        super().__init__()
        with torch.no_grad():
            table = lm.embed.weight @ lm.rnn.weight_ih_l0.T + lm.rnn.bias_ih_l0
        self.table = nn.Parameter(table.detach().clone())
        self.w_hh = nn.Parameter(lm.rnn.weight_hh_l0.detach().T.contiguous().clone())
        self.b_hh = nn.Parameter(lm.rnn.bias_hh_l0.detach().clone())
        self.head = lm.head
        self.hidden = lm.rnn.hidden_size

    def forward(self, token: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gi = self.table[token[:, 0]]
        gh = state @ self.w_hh + self.b_hh
        h = self.hidden
        reset = torch.sigmoid(gi[:, :h] + gh[:, :h])
        update = torch.sigmoid(gi[:, h : 2 * h] + gh[:, h : 2 * h])
        new = torch.tanh(gi[:, 2 * h :] + reset * gh[:, 2 * h :])
        next_state = (1 - update) * new + update * state
        return self.head(next_state), next_state


def batches(data: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = rng.integers(0, len(data) - SEQ_LEN - 1, size=BATCH)
    window = np.stack([data[s : s + SEQ_LEN + 1] for s in starts])
    return torch.from_numpy(window[:, :-1]), torch.from_numpy(window[:, 1:])


def evaluate(model: CharLM, data: np.ndarray) -> float:
    """Mean loss in nats per character over the held-out text, read in one pass with carried state."""
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for start in range(0, len(data) - 1, 512):
            chunk = torch.from_numpy(data[start : start + 513])[None]
            logits, state = model(chunk[:, :-1], state)
            total += float(loss_fn(logits[0], chunk[0, 1:]))
            count += chunk.shape[1] - 1
    return total / count


def train(data: np.ndarray, steps: int) -> CharLM:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = CharLM(len(VOCABULARY), EMBED, HIDDEN)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        x, y = batches(data, rng)
        logits, _ = model(x)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.3f} ({time.perf_counter() - started:.0f}s)", flush=True)
    return model.eval()


def export_onnx(step: Step, path: Path, token: torch.Tensor, state: torch.Tensor) -> None:
    torch.onnx.export(
        step,
        (token, state),
        str(path),
        dynamo=False,  # the dynamo exporter needs onnxscript, which is not a dependency
        input_names=["token", "state"],
        output_names=["logits", "next_state"],
        dynamic_axes={name: {0: "batch"} for name in ("token", "state", "logits", "next_state")},
        opset_version=17,
    )


def export_torchscript(step: Step, path: Path, token: torch.Tensor, state: torch.Tensor) -> None:
    torch.jit.save(torch.jit.trace(step, (token, state)), str(path))


def roll(
    run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], tokens: np.ndarray, hidden: int
) -> np.ndarray:
    """Logits for every position of `tokens` [B, T], feeding the state back step by step."""
    state = np.zeros((tokens.shape[0], hidden), dtype=np.float32)
    out = []
    for t in range(tokens.shape[1]):
        logits, state = run(tokens[:, t : t + 1], state)
        out.append(logits)
    return np.stack(out, axis=1)


def onnx_runner(path: Path) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(token: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, next_state = session.run(None, {"token": token, "state": state})
        return logits, next_state

    return run


def torch_runner(module: Callable[..., Any]) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    def run(token: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, next_state = module(torch.from_numpy(token), torch.from_numpy(state))
        return logits.numpy(), next_state.numpy()

    return run


def config_for(name: str, runtime: str) -> dict[str, object]:
    return {
        "name": name,
        "version": "1",
        "runtime": runtime,
        "inputs": [
            {"name": "token", "datatype": "INT64", "shape": [-1, 1]},
            {"name": "state", "datatype": "FP32", "shape": [-1, HIDDEN]},
        ],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, len(VOCABULARY)]},
            {"name": "next_state", "datatype": "FP32", "shape": [-1, HIDDEN]},
        ],
        "max_batch_size": MAX_BATCH,
        "labels": list(VOCABULARY),
        "generation": {
            "token_input": "token",
            "state_input": "state",
            "logits_output": "logits",
            "state_output": "next_state",
        },
    }


def publish(out: Path, lm: CharLM, held_out: np.ndarray) -> dict[str, object]:
    step = Step(lm).eval()
    tokens = held_out[: 4 * 64].reshape(4, 64)
    with torch.no_grad():
        expected = lm(torch.from_numpy(tokens))[0].numpy()
        eager = roll(torch_runner(step), tokens, HIDDEN)
    worst_step = float(np.max(np.abs(eager - expected)))
    if worst_step > TOLERANCE:
        raise SystemExit(f"the step function differs from nn.GRU by {worst_step:.3g}")
    metrics: dict[str, object] = {"step_vs_gru_max_diff": worst_step}
    # An example batch above 1 keeps the exporters from specialising the batch dimension to 1.
    token, state = torch.from_numpy(tokens[:, :1]), torch.zeros(4, HIDDEN)
    for name, runtime, weights, export in (
        ("charlm", "onnx", "model.onnx", export_onnx),
        ("charlm_torchscript", "torchscript", "model.pt", export_torchscript),
    ):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / weights
        with torch.no_grad():
            export(step, path, token, state)
        (folder / "config.json").write_text(json.dumps(config_for(name, runtime), indent=2) + "\n", encoding="utf-8")
        with torch.no_grad():
            got = roll(
                onnx_runner(path) if runtime == "onnx" else torch_runner(torch.jit.load(str(path)).eval()),
                tokens,
                HIDDEN,
            )
        worst = float(np.max(np.abs(got - expected)))
        if worst > TOLERANCE:
            raise SystemExit(f"{name}: {runtime} output differs from eager by {worst:.3g} (> {TOLERANCE})")
        size = path.stat().st_size
        print(f"{name:<20} {runtime:<12} bytes={size:>8} max|diff|={worst:.2g}")
        metrics[name] = {"bytes": size, "max_diff": worst}
    return metrics


def sample(lm: CharLM, prompt: str, count: int) -> str:
    """Greedy continuation, for the log: a sanity check that the model learned the text."""
    step = Step(lm).eval()
    state = torch.zeros(1, HIDDEN)
    ids = encode(prompt)
    with torch.no_grad():
        for token in ids:
            logits, state = step(torch.tensor([[token]]), state)
        text = []
        for _ in range(count):
            token = int(logits.argmax())
            text.append(VOCABULARY[token])
            logits, state = step(torch.tensor([[token]]), state)
    return prompt + "".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model repository directory")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of 64 x 128 characters")
    parser.add_argument("--metrics", type=Path, default=DEFAULT_METRICS, help="metrics JSON to write")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    data = encode(corpus())
    split = int(len(data) * 0.95)
    train_data, held_out = data[:split], data[split:]
    print(f"corpus: {len(data)} characters, vocabulary {len(VOCABULARY)}; held out {len(held_out)}")
    lm = train(train_data, args.steps)
    loss = evaluate(lm, held_out)
    print(f"held-out loss {loss:.3f} nats/char = {loss / math.log(2):.3f} bits/char")
    print(repr(sample(lm, "The return statement", 120)))
    metrics = {
        "held_out_nats_per_char": round(loss, 4),
        "held_out_bits_per_char": round(loss / math.log(2), 4),
        "steps": args.steps,
        "corpus_characters": len(data),
        **publish(args.out, lm, held_out),
    }
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
