//! MnistCnn throughput on the CPU: one training step (forward + backward + Adam, batch 64) and
//! evaluation (forward, batch 1000), with the zoo's kernels (`zoo`) and on plain candle ops
//! (`candle`, `set_fused_kernels(false)`). The PyTorch side: `python3 ../shared/bench/torch_cnn.py`.
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
    candle_zoo::kernels::allocator::retain_freed_memory();
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (64, 1, 28, 28), &dev).expect("x");
    let y = Tensor::from_vec((0..64u32).map(|i| i % 10).collect::<Vec<_>>(), 64, &dev).expect("y");
    let xe = Tensor::randn(0f32, 1., (1000, 1, 28, 28), &dev).expect("x");
    let mut g = c.benchmark_group("mnist_cnn");
    for imp in ["zoo", "candle"] {
        candle_zoo::kernels::set_fused_kernels(imp == "zoo");
        let (vm, cnn) = model();
        let mut opt = OptimizerConfig::adam()
            .build(named_params(&vm).expect("params"))
            .expect("optimizer");
        g.sample_size(20);
        g.throughput(Throughput::Elements(64));
        g.bench_function(format!("train_step_b64/{imp}"), |b| {
            b.iter(|| {
                let loss = candle_zoo::candle_nn::loss::cross_entropy(&cnn.forward(&x).unwrap(), &y).unwrap();
                opt.step(&loss.backward().unwrap(), 1e-3).unwrap();
            })
        });
        g.throughput(Throughput::Elements(1000));
        g.sample_size(10);
        g.bench_function(format!("eval_b1000/{imp}"), |b| {
            b.iter(|| cnn.forward(&xe).unwrap().to_vec2::<f32>().unwrap())
        });
    }
    candle_zoo::kernels::set_fused_kernels(true);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
