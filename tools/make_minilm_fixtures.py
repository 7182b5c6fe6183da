#!/usr/bin/env python3
"""Reference outputs of sentence-transformers/all-MiniLM-L6-v2 for tests/bert_minilm.rs.

Runs sentence-transformers (PyTorch, CPU, f32) on the real model files in
../shared/models/all-MiniLM-L6-v2 for sentences of different lengths batched together with
padding, and writes tests/fixtures/minilm/reference.safetensors:
  input_ids (b, l) i64, attention_mask (b, l) i64, token_embeddings (b, l, 384) f32,
  sentence_embedding (b, 384) f32 (mean pooling + L2 normalization, as the model card says).
The sentences are in tests/fixtures/minilm/sentences.txt, one per line.

Setup: ../shared/bench/setup.sh --minilm   (sentence-transformers 6.2.0, transformers 5.24.0)
Usage: python tools/make_minilm_fixtures.py
"""
import os

import torch
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
model_dir = os.path.join(root, "..", "shared", "models", "all-MiniLM-L6-v2")
out_dir = os.path.join(root, "tests", "fixtures", "minilm")

with open(os.path.join(out_dir, "sentences.txt"), encoding="utf-8") as f:
    sentences = [line.rstrip("\n") for line in f if line.strip()]

torch.manual_seed(0)
model = SentenceTransformer(model_dir, device="cpu")
model.eval()
features = model.tokenize(sentences)
with torch.no_grad():
    out = model.forward(dict(features))
tensors = {
    "input_ids": features["input_ids"].to(torch.int64).contiguous(),
    "attention_mask": features["attention_mask"].to(torch.int64).contiguous(),
    "token_embeddings": out["token_embeddings"].to(torch.float32).contiguous(),
    "sentence_embedding": out["sentence_embedding"].to(torch.float32).contiguous(),
}
# The public API's result must agree with the module pipeline used above.
api = torch.tensor(model.encode(sentences, batch_size=len(sentences)))
assert torch.allclose(api, tensors["sentence_embedding"], atol=1e-6)
save_file(tensors, os.path.join(out_dir, "reference.safetensors"))
print({k: tuple(v.shape) for k, v in tensors.items()}, "max_seq_length", model.max_seq_length)
