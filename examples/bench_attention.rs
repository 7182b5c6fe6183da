//! Attention speed on the CPU: candle-zoo's fused kernel, the reference (plain candle ops) and
//! candle's own forward-only CPU flash attention, as a table or JSON lines in the format of
//! `../shared/bench/torch_attention.py` (run that in the same sitting and compare ratios).
//!
//! ```text
//! cargo run --release --example bench_attention -- --json
//! cargo run --release --example bench_attention -- --n 4096 --nq 1,16 --hkv 2 --pass fwd --json
//! ```
//! FLOPs as in the PyTorch script: forward 4·B·H·pairs·D (pairs = visible query-key pairs),
//! forward+backward 3.5× that. `peak_rss_mb` is the peak resident memory of this process during
//! the case (the peak is reset before each case through `/proc/self/clear_refs`).

use anyhow::{bail, Result};
use candle_zoo::candle_core::{DType, Device, Tensor, Var};
use candle_zoo::kernels::{
    flash_attention_with_backend, reference_attention, AttentionBackend, AttentionOptions,
};
use clap::Parser;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Key lengths (and query lengths unless --nq is given).
    #[arg(long, default_value = "128,512,1024,2048,4096", value_delimiter = ',')]
    n: Vec<usize>,
    /// Query lengths for decode shapes (queries are the last nq positions).
    #[arg(long, value_delimiter = ',')]
    nq: Vec<usize>,
    #[arg(long, default_value_t = 1)]
    b: usize,
    #[arg(long, default_value_t = 8)]
    h: usize,
    /// Key/value heads (default: --h).
    #[arg(long)]
    hkv: Option<usize>,
    #[arg(long, default_value_t = 64)]
    d: usize,
    /// Implementations: fused, reference, candle_flash.
    #[arg(long, default_value = "fused,reference,candle_flash", value_delimiter = ',')]
    r#impl: Vec<String>,
    /// Passes: fwd, fwd_bwd.
    #[arg(long, default_value = "fwd,fwd_bwd", value_delimiter = ',')]
    pass: Vec<String>,
    /// Causal settings to run: false, true.
    #[arg(long, default_value = "false,true", value_delimiter = ',')]
    causal: Vec<bool>,
    /// Seconds of timed repetitions per case (at least 3 repetitions).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Skip the reference above this n (it materializes n×n scores per head).
    #[arg(long, default_value_t = 4096)]
    reference_max_n: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Device: cpu, or cuda / cuda:N (needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Input dtype: f32, f16, bf16 (the CPU kernel computes in f32 either way).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Also report `max_rel_err`: the fused output against the reference in f32 on the same
    /// device (`max |fused − reference| / max |reference|`; skipped above --reference-max-n).
    #[arg(long)]
    check: bool,
    /// Keep glibc's default allocator settings instead of
    /// `zoo_kernels::allocator::retain_freed_memory()` (what the zoo's examples use).
    #[arg(long)]
    default_malloc: bool,
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Median, min and max seconds of `f` over repetitions lasting about `seconds`.
fn time(seconds: f64, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64)> {
    f()?;
    let t0 = Instant::now();
    f()?;
    let first = t0.elapsed().as_secs_f64();
    let reps = ((seconds / first.max(1e-9)).ceil() as usize).clamp(3, 200);
    let mut t = vec![first];
    for _ in 1..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t[0], t[t.len() - 1]))
}

struct Case {
    b: usize,
    h: usize,
    hkv: usize,
    d: usize,
    nq: usize,
    n: usize,
    causal: bool,
}

impl Case {
    /// Visible (query, key) pairs, as the PyTorch script counts them.
    fn pairs(&self) -> f64 {
        let (nq, n) = (self.nq as f64, self.n as f64);
        if self.nq == self.n {
            n * n * if self.causal { 0.5 } else { 1.0 }
        } else if self.causal {
            nq * n - nq * (nq - 1.0) / 2.0
        } else {
            nq * n
        }
    }
}

/// Median, min and max seconds, and the fused output's error when checked.
type Timing = (f64, f64, f64, Option<f64>);

fn run_case(
    c: &Case,
    imp: &str,
    pass: &str,
    seconds: f64,
    dev: &Device,
    dt: DType,
    check: bool,
) -> Result<Option<Timing>> {
    let rand = |heads: usize, len: usize| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1., (c.b, heads, len, c.d), dev)?.to_dtype(dt)?)
    };
    let (q, k, v) = (rand(c.h, c.nq)?, rand(c.hkv, c.n)?, rand(c.hkv, c.n)?);
    // GPU work is asynchronous: every timed repetition waits for it.
    let time = |seconds: f64, mut f: Box<dyn FnMut() -> Result<()> + '_>| {
        time(seconds, || {
            f()?;
            dev.synchronize()?;
            Ok(())
        })
    };
    let opts = AttentionOptions {
        causal: c.causal,
        ..Default::default()
    };
    let grad = pass == "fwd_bwd";
    let mut err = None;
    let result = match imp {
        "fused" | "reference" => {
            let fused = imp == "fused";
            if fused {
                let (_, backend) = flash_attention_with_backend(&q, &k, &v, &opts)?;
                if !matches!(
                    backend,
                    AttentionBackend::CpuFused | AttentionBackend::CudaFused | AttentionBackend::MetalFused
                ) {
                    bail!("fused kernel not taken: {backend:?}");
                }
            }
            if check && fused {
                let f32s = |t: &Tensor| t.to_dtype(DType::F32);
                let got = f32s(&flash_attention_with_backend(&q, &k, &v, &opts)?.0)?;
                let want = reference_attention(&f32s(&q)?, &f32s(&k)?, &f32s(&v)?, &opts)?;
                let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                err = Some((diff / want.abs()?.max_all()?.to_scalar::<f32>()?) as f64);
            }
            let attn = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
                Ok(if fused {
                    flash_attention_with_backend(q, k, v, &opts)?.0
                } else {
                    reference_attention(q, k, v, &opts)?
                })
            };
            if grad {
                let (q, k, v) = (
                    Var::from_tensor(&q)?,
                    Var::from_tensor(&k)?,
                    Var::from_tensor(&v)?,
                );
                time(
                    seconds,
                    Box::new(|| {
                        attn(&q, &k, &v)?.sum_all()?.backward()?;
                        Ok(())
                    }),
                )?
            } else {
                time(
                    seconds,
                    Box::new(|| {
                        attn(&q, &k, &v)?;
                        Ok(())
                    }),
                )?
            }
        }
        "candle_flash" => {
            if grad || !dev.is_cpu() || dt != DType::F32 {
                return Ok(None); // forward only, CPU f32 only
            }
            // candle's kernel takes (batch, seq, heads, dim).
            let (qt, kt, vt) = (
                q.transpose(1, 2)?.contiguous()?,
                k.transpose(1, 2)?.contiguous()?,
                v.transpose(1, 2)?.contiguous()?,
            );
            let mask = if c.causal {
                candle_zoo::candle_nn::attention::AttnMask::causal_with_offset(c.n - c.nq)
            } else {
                candle_zoo::candle_nn::attention::AttnMask::None
            };
            let scale = 1.0 / (c.d as f32).sqrt();
            time(
                seconds,
                Box::new(|| {
                    candle_zoo::candle_nn::attention::flash_attn::<f32>(
                        &qt,
                        &kt,
                        &vt,
                        scale,
                        mask.clone(),
                        None,
                        None,
                    )?;
                    Ok(())
                }),
            )?
        }
        other => bail!("unknown implementation `{other}` (fused, reference, candle_flash)"),
    };
    Ok(Some((result.0, result.1, result.2, err)))
}

fn main() -> Result<()> {
    let a = Args::parse();
    if !a.default_malloc {
        candle_zoo::kernels::allocator::retain_freed_memory();
    }
    let hkv = a.hkv.unwrap_or(a.h);
    let dev = candle_zoo::device_from_name(&a.device)?;
    let dt = match a.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("unknown dtype `{other}` (f32, f16, bf16)"),
    };
    if !a.json {
        println!("| impl | b | h | hkv | d | nq | n | causal | pass | ms | GFLOP/s | peak RSS MiB |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for &n in &a.n {
        let nqs = if a.nq.is_empty() { vec![n] } else { a.nq.clone() };
        for &nq in &nqs {
            for &causal in &a.causal {
                for imp in &a.r#impl {
                    for pass in &a.pass {
                        if imp == "reference" && n > a.reference_max_n {
                            continue;
                        }
                        let c = Case {
                            b: a.b,
                            h: a.h,
                            hkv,
                            d: a.d,
                            nq,
                            n,
                            causal,
                        };
                        reset_peak_rss();
                        let check = a.check && pass == "fwd" && n <= a.reference_max_n;
                        let Some((med, lo, hi, err)) = run_case(&c, imp, pass, a.seconds, &dev, dt, check)?
                        else {
                            continue;
                        };
                        let flops = 4.0
                            * (c.b * c.h) as f64
                            * c.pairs()
                            * c.d as f64
                            * if pass == "fwd_bwd" { 3.5 } else { 1.0 };
                        let gflops = flops / med / 1e9;
                        let rss = peak_rss_mb();
                        // The CPU lines keep exactly torch_attention.py's keys.
                        let mut extra = if dev.is_cpu() && dt == DType::F32 {
                            String::new()
                        } else {
                            format!(", \"device\": \"{}\", \"dtype\": \"{}\"", a.device, a.dtype)
                        };
                        if let Some(e) = err {
                            extra += &format!(", \"max_rel_err\": {e:.3e}");
                        }
                        if a.json {
                            println!(
                                "{{\"impl\": \"{imp}\", \"b\": {}, \"h\": {}, \"hkv\": {hkv}, \"d\": {}, \"nq\": {nq}, \"n\": {n}, \"causal\": {causal}, \"pass\": \"{pass}\", \"ms\": {:.4}, \"ms_min\": {:.4}, \"ms_max\": {:.4}, \"gflops\": {gflops:.2}, \"peak_rss_mb\": {rss:.1}{extra}}}",
                                a.b, a.h, a.d, med * 1e3, lo * 1e3, hi * 1e3
                            );
                        } else {
                            println!(
                                "| {imp} | {} | {} | {hkv} | {} | {nq} | {n} | {causal} | {pass} | {:.3} | {gflops:.1} | {rss:.0} |",
                                a.b, a.h, a.d, med * 1e3
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
