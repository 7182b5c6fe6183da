//! Fused attention on the CPU (B=1, H=8, D=64): forward and forward+backward at n = 512 and
//! 2048, causal and not, against the reference built from candle ops. The table with PyTorch
//! beside it comes from `cargo run --release --example bench_attention` (see docs/benchmarks.md).
//!
//! `cargo bench --bench attention`

use candle_zoo::candle_core::{Device, Tensor, Var};
use candle_zoo::kernels::{flash_attention, reference_attention, AttentionOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("attention_b1_h8_d64");
    g.sample_size(10);
    for n in [512usize, 2048] {
        let q = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 8, n, 64), &dev).expect("q")).expect("var");
        let k = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 8, n, 64), &dev).expect("k")).expect("var");
        let v = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 8, n, 64), &dev).expect("v")).expect("var");
        for causal in [false, true] {
            let opts = AttentionOptions {
                causal,
                ..Default::default()
            };
            let flops = 4.0 * 8.0 * (n * n) as f64 * 64.0 * if causal { 0.5 } else { 1.0 };
            let tag = format!("n{n}{}", if causal { "_causal" } else { "" });
            g.throughput(Throughput::Elements(flops as u64));
            g.bench_function(BenchmarkId::new("fused_fwd", &tag), |b| {
                b.iter(|| flash_attention(&q, &k, &v, &opts).expect("fwd"))
            });
            g.throughput(Throughput::Elements((flops * 3.5) as u64));
            g.bench_function(BenchmarkId::new("fused_fwd_bwd", &tag), |b| {
                b.iter(|| {
                    flash_attention(&q, &k, &v, &opts)
                        .expect("fwd")
                        .sum_all()
                        .expect("sum")
                        .backward()
                        .expect("bwd")
                })
            });
            if n <= 512 {
                g.throughput(Throughput::Elements(flops as u64));
                g.bench_function(BenchmarkId::new("reference_fwd", &tag), |b| {
                    b.iter(|| reference_attention(&q, &k, &v, &opts).expect("fwd"))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
