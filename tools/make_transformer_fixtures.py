#!/usr/bin/env python3
"""Writes tests/fixtures/transformer/*.safetensors: parity fixtures for PyTorch's
nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder and nn.Transformer.

Each file holds the module's state_dict under its PyTorch names, the inputs (`input.*`: src, tgt,
memory, masks as uint8 (1 = not allowed / padding) or float), `input.grad_output`, the output,
and gradients of sum(output * grad_output) with respect to the float inputs and every parameter
(`grad.*`). The configuration is in the metadata (`config`, JSON). Parameters and inputs are drawn
in float32, the reference is computed in float64 from those exact values (eval mode: no dropout),
so a float32 implementation can be held to ~1e-5.

Usage: python tools/make_transformer_fixtures.py   (needs torch and safetensors; ../shared/bench/setup.sh)
"""
import json
import pathlib
import zlib

import torch
import torch.nn as nn
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "transformer"

# kind: encoder_layer | decoder_layer | encoder | transformer
CASES = [
    dict(name="encoder_layer_post_norm_relu_padding", kind="encoder_layer", d_model=16, nhead=4, ff=32,
         batch=2, src=6, src_key_padding_mask=True),
    dict(name="encoder_layer_pre_norm_gelu_causal", kind="encoder_layer", d_model=16, nhead=2, ff=24,
         batch=2, src=5, norm_first=True, activation="gelu", src_mask="causal"),
    dict(name="encoder_layer_seq_first_float_mask", kind="encoder_layer", d_model=8, nhead=2, ff=16,
         batch=3, src=4, batch_first=False, src_mask="float", layer_norm_eps=1e-6),
    dict(name="decoder_layer_post_norm_masks", kind="decoder_layer", d_model=16, nhead=4, ff=32,
         batch=2, src=7, tgt=5, tgt_mask="causal", tgt_key_padding_mask=True, memory_key_padding_mask=True),
    dict(name="decoder_layer_pre_norm_memory_mask", kind="decoder_layer", d_model=12, nhead=3, ff=20,
         batch=2, src=4, tgt=6, norm_first=True, memory_mask="float", tgt_mask="causal"),
    dict(name="encoder_stack_with_final_norm", kind="encoder", d_model=16, nhead=4, ff=32, batch=2, src=6,
         num_layers=2, src_key_padding_mask=True, norm_first=True),
    dict(name="transformer_post_norm", kind="transformer", d_model=16, nhead=4, ff=32, batch=2, src=7, tgt=5,
         num_encoder_layers=2, num_decoder_layers=2, tgt_mask="causal", src_key_padding_mask=True,
         memory_key_padding_mask=True),
    dict(name="transformer_pre_norm_no_bias", kind="transformer", d_model=8, nhead=2, ff=16, batch=2, src=5,
         tgt=4, num_encoder_layers=1, num_decoder_layers=2, norm_first=True, bias=False, tgt_mask="causal"),
]


def layer_kwargs(c):
    return dict(d_model=c["d_model"], nhead=c["nhead"], dim_feedforward=c["ff"], dropout=0.0,
                activation=c.get("activation", "relu"), layer_norm_eps=c.get("layer_norm_eps", 1e-5),
                batch_first=c.get("batch_first", True), norm_first=c.get("norm_first", False),
                bias=c.get("bias", True))


def build(c):
    torch.manual_seed(zlib.crc32(c["name"].encode()))
    kw = layer_kwargs(c)
    kind = c["kind"]
    if kind == "encoder_layer":
        m = nn.TransformerEncoderLayer(**kw)
    elif kind == "decoder_layer":
        m = nn.TransformerDecoderLayer(**kw)
    elif kind == "encoder":
        m = nn.TransformerEncoder(nn.TransformerEncoderLayer(**kw), c["num_layers"],
                                  norm=nn.LayerNorm(c["d_model"], eps=kw["layer_norm_eps"], bias=kw["bias"]),
                                  enable_nested_tensor=False)
    else:
        m = nn.Transformer(num_encoder_layers=c["num_encoder_layers"], num_decoder_layers=c["num_decoder_layers"],
                           custom_encoder=None, custom_decoder=None, **kw)
    with torch.no_grad():  # non-trivial biases and norm scales, so they are tested too
        for name, p in m.named_parameters():
            if p.dim() == 1:
                if "norm" in name and name.endswith("weight"):
                    p.uniform_(0.8, 1.2)
                else:
                    p.uniform_(-0.2, 0.2)
    return m.double().eval()


def mask(kind, rows, cols, g):
    """(torch mask, stored mask): bool True = not allowed is stored as uint8 1."""
    if kind == "causal":
        m = torch.triu(torch.ones(rows, cols, dtype=torch.bool), diagonal=1)
        return m, m.to(torch.uint8)
    m = torch.randn(rows, cols, generator=g).float().double()
    return m, m.float()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for c in CASES:
        m = build(c)
        b = c["batch"]
        bf = c.get("batch_first", True)
        shape = lambda length: (b, length, c["d_model"]) if bf else (length, b, c["d_model"])
        g = torch.Generator().manual_seed(1)
        rnd = lambda *s: torch.randn(*s, generator=g).float().double()
        inputs, grads_of = {}, {}
        src = rnd(*shape(c["src"])).requires_grad_(True)
        if c["kind"] == "decoder_layer":
            inputs["input.memory"] = src
        else:
            inputs["input.src"] = src
        grads_of["src" if c["kind"] != "decoder_layer" else "memory"] = src
        tgt = None
        if c["kind"] in ("decoder_layer", "transformer"):
            tgt = rnd(*shape(c["tgt"])).requires_grad_(True)
            inputs["input.tgt"] = tgt
            grads_of["tgt"] = tgt
        kw = {}
        stored = {}
        for key, rows, cols in [("src_mask", "src", "src"), ("tgt_mask", "tgt", "tgt"), ("memory_mask", "tgt", "src")]:
            if c.get(key):
                tm, sm = mask(c[key], c[rows], c[cols], g)
                kw[key] = tm
                stored[key] = sm
                if c[key] == "causal":
                    kw[key.replace("_mask", "_is_causal")] = True
        for key, length in [("src_key_padding_mask", "src"), ("tgt_key_padding_mask", "tgt"),
                            ("memory_key_padding_mask", "src")]:
            if c.get(key):
                p = torch.zeros(b, c[length], dtype=torch.bool)
                p[0, -2:] = True  # batch row 0: the last two positions are padding
                kw[key] = p
                stored[key] = p.to(torch.uint8)
        kind = c["kind"]
        if kind == "encoder_layer":
            out = m(src, src_mask=kw.get("src_mask"), src_key_padding_mask=kw.get("src_key_padding_mask"),
                    is_causal=kw.get("src_is_causal", False))
        elif kind == "encoder":
            out = m(src, mask=kw.get("src_mask"), src_key_padding_mask=kw.get("src_key_padding_mask"))
        elif kind == "decoder_layer":
            out = m(tgt, src, tgt_mask=kw.get("tgt_mask"), memory_mask=kw.get("memory_mask"),
                    tgt_key_padding_mask=kw.get("tgt_key_padding_mask"),
                    memory_key_padding_mask=kw.get("memory_key_padding_mask"),
                    tgt_is_causal=kw.get("tgt_is_causal", False))
        else:
            out = m(src, tgt, src_mask=kw.get("src_mask"), tgt_mask=kw.get("tgt_mask"),
                    memory_mask=kw.get("memory_mask"), src_key_padding_mask=kw.get("src_key_padding_mask"),
                    tgt_key_padding_mask=kw.get("tgt_key_padding_mask"),
                    memory_key_padding_mask=kw.get("memory_key_padding_mask"),
                    tgt_is_causal=kw.get("tgt_is_causal", False))
        grad_out = rnd(*out.shape)
        (out * grad_out).sum().backward()
        tensors = {name: p.detach().float().contiguous() for name, p in m.state_dict().items()}
        tensors.update({k: v.detach().float() for k, v in inputs.items()})
        tensors.update({"input." + k: v for k, v in stored.items()})
        tensors["input.grad_output"] = grad_out.float()
        tensors["output"] = out.detach().float()
        for k, v in grads_of.items():
            tensors["grad.input." + k] = v.grad.float()
        for name, p in m.named_parameters():
            tensors["grad." + name] = p.grad.float()
        cfg = dict(kind=kind, d_model=c["d_model"], nhead=c["nhead"], dim_feedforward=c["ff"],
                   activation=c.get("activation", "relu"), layer_norm_eps=c.get("layer_norm_eps", 1e-5),
                   batch_first=bf, norm_first=c.get("norm_first", False), bias=c.get("bias", True),
                   num_layers=c.get("num_layers"), num_encoder_layers=c.get("num_encoder_layers"),
                   num_decoder_layers=c.get("num_decoder_layers"),
                   causal={k: True for k in ("src", "tgt") if c.get(k + "_mask") == "causal"})
        save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"{c['name']}.safetensors",
                  metadata={"config": json.dumps(cfg), "torch": torch.__version__})
        print("wrote", c["name"], len(tensors), "tensors")


if __name__ == "__main__":
    main()
