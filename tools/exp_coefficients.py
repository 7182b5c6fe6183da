"""Coefficients of the AVX-512 `exp` in crates/zoo-kernels/src/math.rs (`avx512::exp_ps`).

e^r = 1 + r·q(r) on [-ln2/2, ln2/2], q of degree 5, fitted for minimax *relative* error by
Lawson's iteratively reweighted least squares. The script then simulates the kernel in f32
(1.5·2^23 rounding, Cody–Waite ln2, Horner, scaling by 2^n) over [-87.3, 0], the arguments a
softmax sees, and prints the worst relative error against float64 `exp`.

Run: python tools/exp_coefficients.py   (needs numpy)
Printed here on 2026-11-29: fit 2.0e-9, simulated f32 kernel 8.6e-8.
"""

import numpy as np

DEGREE = 5
HALF = np.log(2) / 2


def fit():
    r = np.linspace(-HALF, HALF, 20001)
    r[r == 0] = 1e-12
    g = np.expm1(r) / r  # q(r) should equal (e^r - 1) / r
    powers = np.vstack([r**k for k in range(DEGREE + 1)]).T
    weights = np.ones_like(r)
    for _ in range(300):
        # relative error of 1 + r q(r) is r (q - g) / e^r
        w = weights * np.abs(r) / np.exp(r)
        coef, *_ = np.linalg.lstsq(powers * w[:, None], g * w, rcond=None)
        err = np.abs(r * (powers @ coef - g)) / np.exp(r)
        weights = weights * err**0.3
        weights /= weights.max()
    return coef.astype(np.float32), err.max()


def simulate(q):
    f32 = np.float32
    x = np.linspace(-87.3, 0, 2_000_001).astype(f32)
    magic = f32(12582912.0)
    t = (x.astype(np.float64) * f32(np.log2(np.e)) + magic).astype(f32)
    n = (t - magic).astype(f32)
    r = (x.astype(np.float64) - n.astype(np.float64) * f32(0.6933594)).astype(f32)
    r = (r.astype(np.float64) - n.astype(np.float64) * f32(-2.1219444e-4)).astype(f32)
    p = np.full_like(r, q[DEGREE])
    for k in range(DEGREE - 1, -1, -1):
        p = (p.astype(np.float64) * r + q[k]).astype(f32)
    p = (p.astype(np.float64) * r + 1.0).astype(f32)
    got = p.astype(np.float64) * np.exp2(n.astype(np.float64))
    want = np.exp(x.astype(np.float64))
    return (np.abs(got - want) / want).max()


if __name__ == "__main__":
    q, fit_err = fit()
    print("q =", [float(c) for c in q])
    print(f"fit max relative error {fit_err:.2e}, simulated f32 kernel {simulate(q):.2e}")
