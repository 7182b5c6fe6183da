#!/usr/bin/env python3
"""Writes tests/fixtures/mha/*.safetensors: PyTorch nn.MultiheadAttention parity fixtures.

Each file holds the module's state_dict under its PyTorch names, the inputs (`input.*`), the
output, the attention weights when asked, and gradients of sum(output * grad_output) with
respect to the query and every parameter (`grad.*`). The configuration is in the metadata
(`config`, JSON). Parameters and inputs are drawn in float32; the reference results are
computed in float64 from those exact float32 values and stored as float32, so a float32
implementation can be held to ~1e-5.

Usage: python tools/make_mha_fixtures.py      (needs torch and safetensors; see ../shared/bench/setup.sh)
"""
import json
import pathlib
import zlib

import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mha"

CASES = [
    dict(name="self_plain", embed_dim=16, num_heads=4, tgt=5, src=5, batch=2),
    dict(name="cross_kdim_vdim_padding_weights", embed_dim=16, num_heads=2, kdim=12, vdim=8, tgt=3, src=7,
         batch=2, key_padding_mask=True, need_weights=True, average_attn_weights=True),
    dict(name="float_attn_mask_and_padding_per_head_weights", embed_dim=24, num_heads=3, tgt=4, src=6, batch=2,
         attn_mask="float", key_padding_mask=True, need_weights=True, average_attn_weights=False),
    dict(name="causal_no_bias", embed_dim=16, num_heads=4, tgt=6, src=6, batch=3, bias=False,
         attn_mask="causal", is_causal=True),
    dict(name="bool_mask_per_batch_head_seq_first", embed_dim=8, num_heads=2, tgt=4, src=5, batch=2,
         attn_mask="bool3d", batch_first=False),
]


def build(c):
    torch.manual_seed(zlib.crc32(c["name"].encode()))
    mha = torch.nn.MultiheadAttention(c["embed_dim"], c["num_heads"], bias=c.get("bias", True),
                                      kdim=c.get("kdim"), vdim=c.get("vdim"),
                                      batch_first=c.get("batch_first", True))
    with torch.no_grad():
        for p in mha.parameters():  # non-zero biases, so they are tested too
            if p.dim() == 1:
                p.uniform_(-0.2, 0.2)
    return mha.double()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for c in CASES:
        mha = build(c)
        e, b, tgt, src = c["embed_dim"], c["batch"], c["tgt"], c["src"]
        bf = c.get("batch_first", True)
        shape = lambda length, dim: (b, length, dim) if bf else (length, b, dim)
        g = torch.Generator().manual_seed(1)
        rnd = lambda *s: torch.randn(*s, generator=g).float().double()
        q = rnd(*shape(tgt, e)).requires_grad_(True)
        self_attn = c["name"].startswith("self") or c.get("attn_mask") == "causal"
        k = q if self_attn else rnd(*shape(src, c.get("kdim", e)))
        v = q if self_attn else rnd(*shape(src, c.get("vdim", e)))
        inputs = {"input.query": q.detach().float()}
        if not self_attn:
            inputs["input.key"], inputs["input.value"] = k.float(), v.float()
        kwargs = dict(need_weights=c.get("need_weights", False),
                      average_attn_weights=c.get("average_attn_weights", True))
        if c.get("key_padding_mask"):
            kpm = torch.zeros(b, src, dtype=torch.bool)
            kpm[0, -2:] = True  # batch row 0: the last two keys are padding
            kwargs["key_padding_mask"] = kpm
            inputs["input.key_padding_mask"] = kpm.to(torch.uint8)
        am = c.get("attn_mask")
        if am == "float":
            m = rnd(tgt, src)
            kwargs["attn_mask"] = m
            inputs["input.attn_mask"] = m.float()
        elif am == "causal":
            m = torch.triu(torch.ones(tgt, src, dtype=torch.bool), diagonal=1)  # True = not allowed
            kwargs["attn_mask"], kwargs["is_causal"] = m, True
            inputs["input.attn_mask"] = m.to(torch.uint8)
        elif am == "bool3d":
            m = torch.rand(b * c["num_heads"], tgt, src, generator=g) < 0.3
            m[..., 0] = False  # every query keeps at least one key
            kwargs["attn_mask"] = m
            inputs["input.attn_mask"] = m.to(torch.uint8)
        out, weights = mha(q, k, v, **kwargs)
        grad_out = rnd(*out.shape)
        (out * grad_out).sum().backward()
        tensors = {name: p.detach().float().contiguous() for name, p in mha.state_dict().items()}
        tensors.update(inputs)
        tensors["input.grad_output"] = grad_out.float()
        tensors["output"] = out.detach().float()
        if weights is not None:
            tensors["weights"] = weights.detach().float()
        tensors["grad.query"] = q.grad.float()
        for name, p in mha.named_parameters():
            tensors["grad." + name] = p.grad.float()
        cfg = {k_: c.get(k_) for k_ in ["embed_dim", "num_heads", "kdim", "vdim"]}
        cfg.update(bias=c.get("bias", True), batch_first=bf, is_causal=c.get("is_causal", False),
                   need_weights=kwargs["need_weights"], average_attn_weights=kwargs["average_attn_weights"],
                   self_attention=self_attn)
        save_file({k_: v_.contiguous() for k_, v_ in tensors.items()}, OUT / f"{c['name']}.safetensors",
                  metadata={"config": json.dumps(cfg), "torch": torch.__version__})
        print("wrote", c["name"], sorted(tensors))


if __name__ == "__main__":
    main()
