#!/usr/bin/env python3
"""Trains the seed's MNIST CNN in PyTorch with train_mnist's recipe, as an accuracy reference.

Same network (Conv 32/64/64 3x3, MaxPool 2, Dense 64, Dense 10), Glorot-uniform weights with
zero biases (Keras' defaults), inputs normalized with 0.1307/0.3081, batch 64, Adam lr 1e-3,
optional cosine schedule with linear warm-up. Reads data/mnist/*.gz. Prints test accuracy per
epoch, to compare with `cargo run --release --example train_mnist`.

Usage: python tools/torch_mnist_reference.py [--epochs 5] [--schedule cosine|constant] [--seed 0]
"""
import argparse
import gzip
import math
import pathlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "mnist"


def idx(name):
    raw = gzip.open(DATA / name).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3)
        self.fc1, self.fc2 = nn.Linear(576, 64), nn.Linear(64, 10)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(F.relu(self.conv3(x)), 1)
        return self.fc2(F.relu(self.fc1(x)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    norm = lambda x: (torch.from_numpy(x.astype(np.float32) / 255.0) - 0.1307) / 0.3081
    xtr, ytr = norm(idx("train-images-idx3-ubyte.gz")).unsqueeze(1), torch.from_numpy(idx("train-labels-idx1-ubyte.gz").astype(np.int64))
    xte, yte = norm(idx("t10k-images-idx3-ubyte.gz")).unsqueeze(1), torch.from_numpy(idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))
    model = Cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_per_epoch = math.ceil(len(xtr) / 64)
    total = steps_per_epoch * a.epochs

    def lr_at(step):
        if a.schedule == "constant":
            return 1e-3
        if step < a.warmup:
            return 1e-3 * (step + 1) / a.warmup
        p = min(1.0, (step - a.warmup) / max(1, total - a.warmup - 1))
        return 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * p))

    step = 0
    for epoch in range(1, a.epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            b = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(xtr[b]), ytr[b]).backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            acc = sum((model(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item() for i in range(0, 10000, 1000)) / 100
        print(f"epoch {epoch}/{a.epochs} test_acc {acc:.2f}%", flush=True)


if __name__ == "__main__":
    main()
