//! The fused kernel against the reference evaluated in f64, forward and all three gradients.
//!
//! Error measure, per tensor: `max |fused − reference| / max |reference|` (a relative error
//! that stays meaningful where individual entries are near zero). Tolerances:
//! - f32 inputs: 1e-5 (the target). Observed: at most 2.1e-6 (head dim 256), typically
//!   1e-7–8e-7, over every shape and option combination below.
//! - logits `q·k ~ N(0, 1e4²)`: 2e-3, measured against the largest of the four reference
//!   tensors. After scaling, scores reach ±4e3, and merely rounding such an f32 score moves it
//!   by ~2.4e-4 inside `exp` (any f32 kernel shares this; observed worst 8e-4, on dk). A
//!   saturated softmax also makes the true dq/dk nearly vanish (~1e-8), so measuring them
//!   against their own scale would turn plain f32 rounding into a meaningless ratio.
//! - f16/bf16 inputs: 1e-2, the precision of the returned dtype (bf16 has 8 mantissa bits).

use super::*;
use candle_core::{Device, Var};
use rand::{Rng, SeedableRng};

struct Case {
    name: &'static str,
    b: usize,
    h: usize,
    hkv: usize,
    nq: usize,
    nk: usize,
    d: usize,
}

const fn case(name: &'static str, b: usize, h: usize, hkv: usize, nq: usize, nk: usize, d: usize) -> Case {
    Case {
        name,
        b,
        h,
        hkv,
        nq,
        nk,
        d,
    }
}

/// Shapes: size 1 everywhere, odd sizes, several query/key blocks (64 / 128), q_len != kv_len
/// both ways, grouped-query and multi-query attention, head dims from 1 to 256; cases with at
/// most 8 stacked rows per kv head run the row-major decode forward (`decode.rs`). On machines
/// with more than one thread, the last two cases split work between threads: the backward of
/// one group's 3 query blocks, and the keys of a single query block (`cpu::tests` covers both
/// splits on any machine).
const CASES: &[Case] = &[
    case("all ones", 1, 1, 1, 1, 1, 1),
    case("odd", 2, 3, 3, 17, 17, 7),
    case("gqa, nq < nk", 1, 4, 2, 33, 65, 16),
    case("mqa, several blocks", 2, 2, 1, 70, 130, 64),
    case("decode-like", 1, 8, 2, 1, 300, 32),
    case("nq > nk", 1, 2, 2, 150, 20, 96),
    case("head dim 256", 1, 1, 1, 9, 140, 256),
    case("long keys", 1, 2, 2, 3, 517, 64),
    case("decode, 8 stacked rows, odd head dim", 2, 8, 2, 2, 200, 40),
    case("mqa, batch 1: backward split", 1, 4, 1, 40, 90, 32),
    case("one query block, long keys: keys split", 1, 2, 1, 20, 600, 32),
];

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn randn(r: &mut rand::rngs::StdRng, shape: &[usize], std: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    // Sum of 4 uniforms, rescaled: close enough to a normal for test data.
    let v: Vec<f32> = (0..n)
        .map(|_| (0..4).map(|_| r.random::<f32>() - 0.5).sum::<f32>() * std * 1.732)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn max_abs(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>()
}

fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    assert!(
        a.iter().all(|x| x.is_finite()),
        "non-finite values in the fused result"
    );
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    Ok(if scale == 0.0 { diff } else { diff / scale })
}

type Attn = fn(&Tensor, &Tensor, &Tensor, &AttentionOptions) -> Result<Tensor>;

/// Output and gradients of `Σ attn(q, k, v) ∘ r`, computed in `dtype`.
fn run(attn: Attn, inputs: [&Tensor; 4], dtype: DType, opts: &AttentionOptions) -> Result<[Tensor; 4]> {
    let [q, k, v, r] = inputs;
    let vars = [q, k, v].map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap());
    let out = attn(
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
        opts,
    )?;
    let grads = (out.to_dtype(DType::F64)? * r.to_dtype(DType::F64)?)?
        .sum_all()?
        .backward()?;
    let g = |i: usize| grads.get(vars[i].as_tensor()).cloned().expect("gradient");
    Ok([out, g(0), g(1), g(2)])
}

/// Compares fused with the f64 reference; with `common_scale`, every error is measured
/// against the largest reference tensor instead of its own (see the module docs).
fn check(c: &Case, opts: &AttentionOptions, seed: u64, logit_std: f32, tol: f64) -> Result<()> {
    check_scaled(c, opts, seed, logit_std, tol, false)
}

fn check_scaled(
    c: &Case,
    opts: &AttentionOptions,
    seed: u64,
    logit_std: f32,
    tol: f64,
    common_scale: bool,
) -> Result<()> {
    let mut r = rng(seed);
    let q = randn(&mut r, &[c.b, c.h, c.nq, c.d], logit_std)?;
    let k = randn(&mut r, &[c.b, c.hkv, c.nk, c.d], 1.0)?;
    let v = randn(&mut r, &[c.b, c.hkv, c.nk, c.d], 1.0)?;
    let up = randn(&mut r, &[c.b, c.h, c.nq, c.d], 1.0)?;
    let (_, backend) = flash_attention_with_backend(&q, &k, &v, opts)?;
    assert_eq!(
        backend,
        AttentionBackend::CpuFused,
        "{}: fused path not taken",
        c.name
    );
    let fused = run(flash_attention, [&q, &k, &v, &up], DType::F32, opts)?;
    let want = run(reference_attention, [&q, &k, &v, &up], DType::F64, opts)?;
    let scales: Vec<f64> = want.iter().map(max_abs).collect::<Result<_>>()?;
    let common = scales.iter().fold(0f64, |m, &x| m.max(x));
    for (i, what) in ["output", "dq", "dk", "dv"].iter().enumerate() {
        let e = rel_err(&fused[i], &want[i])?;
        let e = if common_scale && scales[i] > 0.0 {
            e * scales[i] / common
        } else {
            e
        };
        eprintln!(
            "{:<22} {what:<6} causal={} mask={} lens={} err {e:.2e}",
            c.name,
            opts.causal,
            opts.mask.is_some(),
            opts.kv_lengths.is_some()
        );
        assert!(
            e <= tol,
            "{} {what}: relative error {e:.2e} > {tol:.0e} ({opts:?})",
            c.name
        );
    }
    Ok(())
}

#[test]
fn plain_and_causal_match_the_f64_reference() -> Result<()> {
    for (i, c) in CASES.iter().enumerate() {
        for causal in [false, true] {
            let opts = AttentionOptions {
                causal,
                ..Default::default()
            };
            check(c, &opts, i as u64, 1.0, 1e-5)?;
        }
    }
    Ok(())
}

/// In-kernel dropout against the reference with the same mask (same seed): output and all three
/// gradients within the f32 tolerance, plain, causal and key-padded; p = 0 equals no dropout.
#[test]
fn dropout_in_the_kernel_matches_the_reference_with_the_same_mask() -> Result<()> {
    for (i, c) in CASES.iter().enumerate() {
        for (causal, p) in [(false, 0.1f32), (true, 0.5)] {
            let opts = AttentionOptions {
                causal,
                kv_lengths: (i % 3 == 1)
                    .then(|| Tensor::new(vec![(c.nk as u32).div_ceil(2); c.b], &Device::Cpu))
                    .transpose()?,
                dropout: Some(AttentionDropout::with_seed(p, 1000 + i as u64)),
                ..Default::default()
            };
            check(c, &opts, i as u64, 1.0, 1e-5)?;
        }
    }
    // p = 0 is plain attention; a different seed gives a different output.
    let c = &CASES[3];
    let mut r = rng(3);
    let q = randn(&mut r, &[c.b, c.h, c.nq, c.d], 1.0)?;
    let k = randn(&mut r, &[c.b, c.hkv, c.nk, c.d], 1.0)?;
    let v = randn(&mut r, &[c.b, c.hkv, c.nk, c.d], 1.0)?;
    let with = |d: Option<AttentionDropout>| {
        flash_attention(
            &q,
            &k,
            &v,
            &AttentionOptions {
                dropout: d,
                ..Default::default()
            },
        )
    };
    let plain = with(None)?;
    assert_eq!(
        rel_err(&with(Some(AttentionDropout::with_seed(0.0, 5)))?, &plain)?,
        0.0
    );
    let (a, b) = (
        with(Some(AttentionDropout::with_seed(0.3, 5)))?,
        with(Some(AttentionDropout::with_seed(0.3, 6)))?,
    );
    assert!(rel_err(&a, &b)? > 1e-2 && rel_err(&a, &plain)? > 1e-2);
    assert!(with(Some(AttentionDropout::with_seed(1.0, 5))).is_err());
    Ok(())
}

#[test]
fn masks_padding_and_rows_without_keys_match_the_reference() -> Result<()> {
    for (i, c) in CASES.iter().enumerate() {
        let mut r = rng(100 + i as u64);
        // Boolean mask (1 = may attend) over (batch, 1, q_len, kv_len), ~30% masked, with
        // the first query row fully masked when there is more than one row.
        let allow: Vec<u8> = (0..c.b * c.nq * c.nk)
            .map(|idx| {
                let row = (idx / c.nk) % c.nq;
                u8::from(!(c.nq > 1 && row == 0) && r.random::<f32>() > 0.3)
            })
            .collect();
        let allow = Tensor::from_vec(allow, (c.b, 1, c.nq, c.nk), &Device::Cpu)?;
        // Additive float mask broadcast over batch and queries: (heads, 1, kv_len), some -inf.
        let add: Vec<f32> = (0..c.h * c.nk)
            .map(|_| {
                if r.random::<f32>() < 0.2 {
                    f32::NEG_INFINITY
                } else {
                    r.random::<f32>() * 2.0 - 1.0
                }
            })
            .collect();
        let add = Tensor::from_vec(add, (c.h, 1, c.nk), &Device::Cpu)?;
        // Padding: batch row 0 keeps ~2/3 of its keys; a second batch row (if any) keeps none.
        let lens: Vec<u32> = (0..c.b)
            .map(|b| if b == 0 { (c.nk * 2 / 3).max(1) as u32 } else { 0 })
            .collect();
        let lens = Tensor::from_vec(lens, c.b, &Device::Cpu)?;
        let variants = [
            AttentionOptions {
                mask: Some(AttentionMask::Allow(allow.clone())),
                ..Default::default()
            },
            AttentionOptions {
                mask: Some(AttentionMask::Additive(add.clone())),
                causal: true,
                ..Default::default()
            },
            AttentionOptions {
                kv_lengths: Some(lens.clone()),
                ..Default::default()
            },
            AttentionOptions {
                mask: Some(AttentionMask::Allow(allow)),
                kv_lengths: Some(lens),
                causal: true,
                scale: Some(0.3),
                dropout: Some(AttentionDropout::with_seed(0.2, 77)),
            },
        ];
        for (j, opts) in variants.iter().enumerate() {
            check(c, opts, 200 + (i * 10 + j) as u64, 1.0, 1e-5)?;
        }
    }
    Ok(())
}

/// A NaN in a query row's scores makes that row's output NaN (as in PyTorch), on the block
/// kernel, the decode forward and the decode forward with keys split between threads; it does
/// not pass for a row that saw no key.
#[test]
fn nan_scores_give_nan_rows() -> Result<()> {
    for c in [
        case("block", 1, 2, 2, 40, 70, 16),
        case("decode", 1, 8, 2, 1, 600, 16),
        case("decode, split keys", 1, 8, 1, 1, 1200, 16),
    ] {
        let mut r = rng(5);
        let mut q = randn(&mut r, &[c.b, c.h, c.nq, c.d], 1.0)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        q[3] = f32::NAN; // row 0 of head 0
        let q = Tensor::from_vec(q, (c.b, c.h, c.nq, c.d), &Device::Cpu)?;
        let k = randn(&mut r, &[c.b, c.hkv, c.nk, c.d], 1.0)?;
        let v = randn(&mut r, &[c.b, c.hkv, c.nk, c.d], 1.0)?;
        let out = flash_attention(&q, &k, &v, &AttentionOptions::default())?;
        let rows = out.flatten_to(2)?.to_vec2::<f32>()?;
        assert!(rows[0].iter().all(|x| x.is_nan()), "{}: the NaN row", c.name);
        assert!(
            rows[1..].iter().flatten().all(|x| x.is_finite()),
            "{}: the other rows",
            c.name
        );
    }
    Ok(())
}

/// Blocks the causal diagonal cuts skip their hidden corner, so parts of the per-thread score
/// buffers keep what an earlier call left there. After a call whose scores and `dP` were all
/// NaN (on this thread, the caller, which takes part in every loop), the next causal call must
/// still match the reference: nothing stale may reach a result. The diagonal's offset
/// (`kv_len − q_len`) moves through 0..6 so that it falls differently on the 6-row tiles of
/// the products, once with padding lengths too.
#[test]
fn stale_scratch_from_a_nan_call_does_not_leak() -> Result<()> {
    let mut r = rng(77);
    for offset in 0..7 {
        let c = case("cut diagonal", 2, 2, 1, 70, 70 + offset, 16);
        let nan = |shape: &[usize]| Tensor::full(f32::NAN, shape, &Device::Cpu);
        let q = nan(&[c.b, c.h, c.nq, c.d])?;
        let k = randn(&mut r, &[c.b, c.hkv, c.nk, c.d], 1.0)?;
        let v = nan(&[c.b, c.hkv, c.nk, c.d])?;
        let up = randn(&mut r, &[c.b, c.h, c.nq, c.d], 1.0)?;
        let [out, ..] = run(
            flash_attention,
            [&q, &k, &v, &up],
            DType::F32,
            &AttentionOptions::default(),
        )?;
        assert!(
            out.flatten_all()?.to_vec1::<f32>()?.iter().all(|x| x.is_nan()),
            "NaN inputs give NaN outputs"
        );
        let lens = (offset == 6)
            .then(|| Tensor::new(&[60u32, 37], &Device::Cpu))
            .transpose()?;
        let opts = AttentionOptions {
            causal: true,
            kv_lengths: lens,
            ..Default::default()
        };
        check(&c, &opts, 300 + offset as u64, 1.0, 1e-5)?;
    }
    Ok(())
}

#[test]
fn rows_that_see_no_key_give_zeros_and_zero_gradient() -> Result<()> {
    // q_len 6 > kv_len 3 with causal: queries 0..2 see no key (i + 3 - 6 < 0).
    let mut r = rng(7);
    let q = Var::from_tensor(&randn(&mut r, &[1, 2, 6, 8], 1.0)?)?;
    let k = Var::from_tensor(&randn(&mut r, &[1, 2, 3, 8], 1.0)?)?;
    let v = Var::from_tensor(&randn(&mut r, &[1, 2, 3, 8], 1.0)?)?;
    let opts = AttentionOptions {
        causal: true,
        ..Default::default()
    };
    let out = flash_attention(&q, &k, &v, &opts)?;
    let rows = out.narrow(2, 0, 3)?.flatten_all()?.to_vec1::<f32>()?;
    assert!(rows.iter().all(|&x| x == 0.0), "{rows:?}");
    let grads = out.sqr()?.sum_all()?.backward()?;
    let dq = grads.get(&q).expect("dq");
    assert!(dq
        .narrow(2, 0, 3)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .all(|&x| x == 0.0));
    for t in [grads.get(&q), grads.get(&k), grads.get(&v)] {
        assert!(t
            .expect("grad")
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|x| x.is_finite()));
    }
    // No key at all.
    let empty = Tensor::zeros((1, 2, 0, 8), DType::F32, &Device::Cpu)?;
    let out = flash_attention(q.as_tensor(), &empty, &empty, &AttentionOptions::default())?;
    assert!(out.flatten_all()?.to_vec1::<f32>()?.iter().all(|&x| x == 0.0));
    Ok(())
}

#[test]
fn large_logits_stay_finite_and_accurate() -> Result<()> {
    // q·k of magnitude ~1e4 before scaling: q has std 1e4/sqrt(d), k std 1, so q·k ~ N(0, 1e4²).
    for (i, c) in CASES.iter().enumerate().skip(1) {
        let std = 1e4 / (c.d as f32).sqrt();
        for causal in [false, true] {
            let opts = AttentionOptions {
                causal,
                ..Default::default()
            };
            check_scaled(c, &opts, 300 + i as u64, std, 2e-3, true)?;
        }
    }
    Ok(())
}

#[test]
fn non_contiguous_inputs() -> Result<()> {
    let mut r = rng(11);
    // (batch, seq, heads, dim) storage viewed as (batch, heads, seq, dim).
    let q = randn(&mut r, &[2, 19, 4, 16], 1.0)?.transpose(1, 2)?;
    let k = randn(&mut r, &[2, 23, 2, 16], 1.0)?.transpose(1, 2)?;
    let v = randn(&mut r, &[2, 23, 2, 16], 1.0)?.transpose(1, 2)?;
    assert!(!q.is_contiguous());
    let opts = AttentionOptions {
        causal: true,
        ..Default::default()
    };
    let up = randn(&mut r, &[2, 4, 19, 16], 1.0)?;
    let fused = run(flash_attention, [&q, &k, &v, &up], DType::F32, &opts)?;
    let want = run(reference_attention, [&q, &k, &v, &up], DType::F64, &opts)?;
    for i in 0..4 {
        let e = rel_err(&fused[i], &want[i])?;
        assert!(e <= 1e-5, "non-contiguous #{i}: {e:.2e}");
    }
    Ok(())
}

#[test]
fn half_precision_inputs_are_computed_in_f32_and_returned_as_given() -> Result<()> {
    let c = &CASES[3];
    for dtype in [DType::BF16, DType::F16] {
        let mut r = rng(13);
        let q = randn(&mut r, &[c.b, c.h, c.nq, c.d], 1.0)?.to_dtype(dtype)?;
        let k = randn(&mut r, &[c.b, c.hkv, c.nk, c.d], 1.0)?.to_dtype(dtype)?;
        let v = randn(&mut r, &[c.b, c.hkv, c.nk, c.d], 1.0)?.to_dtype(dtype)?;
        let up = randn(&mut r, &[c.b, c.h, c.nq, c.d], 1.0)?;
        let opts = AttentionOptions {
            causal: true,
            ..Default::default()
        };
        let (out, backend) = flash_attention_with_backend(&q, &k, &v, &opts)?;
        assert_eq!((out.dtype(), backend), (dtype, AttentionBackend::CpuFused));
        let fused = run(flash_attention, [&q, &k, &v, &up], dtype, &opts)?;
        let want = run(reference_attention, [&q, &k, &v, &up], DType::F64, &opts)?;
        for i in 0..4 {
            let e = rel_err(&fused[i], &want[i])?;
            assert!(e <= 1e-2, "{dtype:?} #{i}: {e:.2e}");
        }
    }
    Ok(())
}

#[test]
fn invalid_inputs_are_errors_that_say_what_is_wrong() -> Result<()> {
    let t = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu);
    let opts = AttentionOptions::default();
    let err = |q: &Tensor, k: &Tensor, v: &Tensor, o: &AttentionOptions| {
        flash_attention(q, k, v, o).unwrap_err().to_string()
    };
    assert!(err(&t(&[2, 4, 8])?, &t(&[2, 4, 8, 8])?, &t(&[2, 4, 8, 8])?, &opts).contains("q must be"));
    assert!(err(&t(&[1, 4, 8, 8])?, &t(&[1, 3, 8, 8])?, &t(&[1, 3, 8, 8])?, &opts).contains("must divide"));
    assert!(err(&t(&[1, 4, 8, 8])?, &t(&[1, 4, 8, 8])?, &t(&[1, 4, 9, 8])?, &opts).contains("v has shape"));
    let bad_mask = AttentionOptions {
        mask: Some(AttentionMask::Additive(t(&[3, 8])?)),
        ..Default::default()
    };
    assert!(err(
        &t(&[1, 4, 8, 8])?,
        &t(&[1, 4, 8, 8])?,
        &t(&[1, 4, 8, 8])?,
        &bad_mask
    )
    .contains("does not broadcast"));
    let bad_len = AttentionOptions {
        kv_lengths: Some(Tensor::new(&[9u32], &Device::Cpu)?),
        ..Default::default()
    };
    assert!(err(
        &t(&[1, 4, 8, 8])?,
        &t(&[1, 4, 8, 8])?,
        &t(&[1, 4, 8, 8])?,
        &bad_len
    )
    .contains("outside 0..=8"));
    Ok(())
}

#[test]
fn f64_and_oversized_heads_use_the_reference_and_say_why() -> Result<()> {
    let t = |s: &[usize], dt| Tensor::zeros(s, dt, &Device::Cpu);
    let (_, b) = flash_attention_with_backend(
        &t(&[1, 1, 2, 4], DType::F64)?,
        &t(&[1, 1, 2, 4], DType::F64)?,
        &t(&[1, 1, 2, 4], DType::F64)?,
        &AttentionOptions::default(),
    )?;
    assert!(
        matches!(b, AttentionBackend::Reference(ref why) if why.contains("F64")),
        "{b:?}"
    );
    let (_, b) = flash_attention_with_backend(
        &t(&[1, 1, 2, 300], DType::F32)?,
        &t(&[1, 1, 2, 300], DType::F32)?,
        &t(&[1, 1, 2, 300], DType::F32)?,
        &AttentionOptions::default(),
    )?;
    assert!(
        matches!(b, AttentionBackend::Reference(ref why) if why.contains("300")),
        "{b:?}"
    );
    Ok(())
}
