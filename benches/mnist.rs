//! MnistCnn throughput on the CPU: one training step (forward + backward + Adam, batch 64) and
//! evaluation (forward, batch 1000). The PyTorch side: `python3 ../shared/bench/torch_cnn.py`.
//!
//! `cargo bench --bench mnist`

use candle_zoo::candle_core::{DType, Device, Module, Tensor};
use candle_zoo::candle_nn::VarMap;
use candle_zoo::models::vision::{MnistCnn, MnistCnnConfig};
use candle_zoo::train::optim::named_params;
use candle_zoo::train::OptimizerConfig;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn model() -> (VarMap, MnistCnn) {
    let vm = VarMap::new();
    let vb = candle_zoo::nn::init::seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu);
    let m = MnistCnn::new(&MnistCnnConfig::default(), vb).expect("model");
    (vm, m)
}

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (vm, cnn) = model();
    let mut opt = OptimizerConfig::adam()
        .build(named_params(&vm).expect("params"))
        .expect("optimizer");
    let x = Tensor::randn(0f32, 1., (64, 1, 28, 28), &dev).expect("x");
    let y = Tensor::from_vec((0..64u32).map(|i| i % 10).collect::<Vec<_>>(), 64, &dev).expect("y");
    let mut g = c.benchmark_group("mnist_cnn");
    g.sample_size(20);
    g.throughput(Throughput::Elements(64));
    g.bench_function("train_step_b64", |b| {
        b.iter(|| {
            let loss = candle_zoo::candle_nn::loss::cross_entropy(&cnn.forward(&x).unwrap(), &y).unwrap();
            opt.step(&loss.backward().unwrap(), 1e-3).unwrap();
        })
    });
    let xe = Tensor::randn(0f32, 1., (1000, 1, 28, 28), &dev).expect("x");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(10);
    g.bench_function("eval_b1000", |b| {
        b.iter(|| cnn.forward(&xe).unwrap().to_vec2::<f32>().unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
