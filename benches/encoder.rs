//! One training step of a Transformer encoder layer (post-norm, ReLU, d_model 256, 8 heads,
//! ff 1024, batch 32 × 128 tokens, dropout 0.1, MSE loss, Adam), with the zoo's kernels (`zoo`)
//! and on plain candle ops (`candle`). The PyTorch side:
//! `python3 ../shared/bench/torch_transformer.py`.
//!
//! `cargo bench --bench encoder`

use candle_zoo::candle_core::{DType, Device, Tensor};
use candle_zoo::candle_nn::VarMap;
use candle_zoo::nn::{EncoderArgs, TransformerEncoderLayer, TransformerLayerConfig};
use candle_zoo::train::optim::named_params;
use candle_zoo::train::OptimizerConfig;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    candle_zoo::kernels::allocator::retain_freed_memory();
    let dev = Device::Cpu;
    let (bs, seq, d) = (32, 128, 256);
    let x = Tensor::randn(0f32, 1., (bs, seq, d), &dev).expect("x");
    let target = Tensor::randn(0f32, 1., (bs, seq, d), &dev).expect("target");
    let args = EncoderArgs {
        train: true,
        ..Default::default()
    };
    let mut g = c.benchmark_group("encoder_layer");
    g.sample_size(10);
    g.throughput(Throughput::Elements((bs * seq) as u64));
    for imp in ["zoo", "candle"] {
        candle_zoo::kernels::set_fused_kernels(imp == "zoo");
        let vm = VarMap::new();
        let cfg = TransformerLayerConfig {
            d_model: d,
            nhead: 8,
            dim_feedforward: 1024,
            dropout: 0.1,
            ..Default::default()
        };
        let layer = TransformerEncoderLayer::new(
            &cfg,
            candle_zoo::nn::init::seeded_var_builder(&vm, 0, DType::F32, &dev),
        )
        .expect("layer");
        let mut opt = OptimizerConfig::adam()
            .build(named_params(&vm).expect("params"))
            .expect("optimizer");
        g.bench_function(format!("train_step_d256_seq128_b32/{imp}"), |b| {
            b.iter(|| {
                let y = layer.forward(&x, &args).unwrap();
                let loss = candle_zoo::candle_nn::loss::mse(&y, &target).unwrap();
                opt.step(&loss.backward().unwrap(), 1e-3).unwrap();
            })
        });
    }
    candle_zoo::kernels::set_fused_kernels(true);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
