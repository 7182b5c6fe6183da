//! CPU training throughput: MnistCnn training / evaluation (JSON lines in the format of
//! `../shared/bench/torch_cnn.py`), one Transformer encoder layer's training step (d_model 256,
//! 8 heads, ff 1024, seq 128, batch 32, MSE loss, Adam — `../shared/bench/torch_transformer.py`),
//! and a per-op forward/backward profile of the CNN (`--profile`).
//!
//! ```text
//! cargo run --release --example bench_train -- --json
//! cargo run --release --example bench_train -- --model encoder --dropout 0.1 --json
//! cargo run --release --example bench_train -- --profile
//! ```

use anyhow::Result;
use candle_zoo::candle_core::{DType, Device, Module, Tensor, Var};
use candle_zoo::candle_nn::{Conv2d, Conv2dConfig, Linear, VarMap};
use candle_zoo::kernels::pool::max_pool2d;
use candle_zoo::models::vision::{MnistCnn, MnistCnnConfig};
use candle_zoo::train::optim::named_params;
use candle_zoo::train::OptimizerConfig;
use clap::Parser;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Training steps per timed repetition.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// One JSON line per measurement instead of a table.
    #[arg(long)]
    json: bool,
    /// Time each layer's forward and backward at the training shapes.
    #[arg(long)]
    profile: bool,
    /// What to measure: cnn, encoder.
    #[arg(long, default_value = "cnn,encoder", value_delimiter = ',')]
    model: Vec<String>,
    /// Dropout of the encoder layer (torch_transformer.py's default is 0.1).
    #[arg(long, default_value_t = 0.1)]
    dropout: f32,
    /// Implementations to measure: zoo (our fused kernels), candle (the same models on plain
    /// candle ops: `zoo_kernels::set_fused_kernels(false)`).
    #[arg(long = "impl", default_value = "zoo", value_delimiter = ',')]
    impls: Vec<String>,
    /// Encoder-layer training steps per timed repetition.
    #[arg(long, default_value_t = 5)]
    encoder_steps: usize,
}

/// Median seconds of `reps` runs of `f`, after one warm-up run.
fn median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Reuse freed buffers instead of faulting them in again every step (glibc; see its docs).
    candle_zoo::kernels::allocator::retain_freed_memory();
    let dev = Device::Cpu;
    let threads = rayon_threads();
    for imp in &args.impls {
        let fused = match imp.as_str() {
            "zoo" => true,
            "candle" => false,
            other => anyhow::bail!("--impl {other}: expected zoo or candle"),
        };
        candle_zoo::kernels::set_fused_kernels(fused);
        if args.model.iter().any(|m| m == "encoder") {
            encoder_step(&args, &dev, threads, imp)?;
        }
        if args.model.iter().any(|m| m == "cnn") {
            cnn(&args, &dev, threads, imp)?;
        }
    }
    if args.profile {
        candle_zoo::kernels::set_fused_kernels(true);
        profile(&dev, args.reps.max(3))?;
    }
    Ok(())
}

/// MnistCnn training (batch 64, Adam) and evaluation (batch 1000) throughput.
fn cnn(args: &Args, dev: &Device, threads: usize, imp: &str) -> Result<()> {
    let dev = dev.clone();
    let vm = VarMap::new();
    let cnn = MnistCnn::new(
        &MnistCnnConfig::default(),
        candle_zoo::nn::init::seeded_var_builder(&vm, 0, DType::F32, &dev),
    )?;
    let mut opt = OptimizerConfig::adam().build(named_params(&vm)?)?;
    let xs: Vec<Tensor> = (0..8)
        .map(|_| Tensor::randn(0f32, 1., (64, 1, 28, 28), &dev))
        .collect::<candle_zoo::candle_core::Result<_>>()?;
    let y = Tensor::from_vec((0..64u32).map(|i| i % 10).collect::<Vec<_>>(), 64, &dev)?;
    let (mut fwd, mut bwd, mut step) = (0f64, 0f64, 0f64);
    let train = median(args.reps, || {
        for i in 0..args.steps {
            let t0 = Instant::now();
            let loss = candle_zoo::candle_nn::loss::cross_entropy(&cnn.forward(&xs[i % 8])?, &y)?;
            loss.to_scalar::<f32>()?;
            let t1 = Instant::now();
            let grads = loss.backward()?;
            let t2 = Instant::now();
            opt.step(&grads, 1e-3)?;
            let t3 = Instant::now();
            fwd += (t1 - t0).as_secs_f64();
            bwd += (t2 - t1).as_secs_f64();
            step += (t3 - t2).as_secs_f64();
        }
        Ok(())
    })?;
    let n_steps = (args.steps * (args.reps + 1)) as f64;
    let xe = Tensor::randn(0f32, 1., (1000, 1, 28, 28), &dev)?;
    let eval = median(args.reps * 2, || {
        cnn.forward(&xe)?.to_vec2::<f32>()?;
        Ok(())
    })?;
    let train_ips = 64.0 * args.steps as f64 / train;
    let ms_step = train / args.steps as f64 * 1e3;
    if args.json {
        println!(
            "{{\"impl\":\"{imp}\",\"pass\":\"train\",\"batch\":64,\"img_per_s\":{train_ips:.1},\"ms_per_step\":{ms_step:.3},\"threads\":{threads}}}"
        );
        println!(
            "{{\"impl\":\"{imp}\",\"pass\":\"eval\",\"batch\":1000,\"img_per_s\":{:.1},\"ms_per_batch\":{:.3},\"threads\":{threads}}}",
            1000.0 / eval,
            eval * 1e3
        );
    } else {
        println!("| impl | pass | batch | img/s | ms per step | forward ms | backward ms | optimizer ms |");
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| {imp} | train | 64 | {train_ips:.0} | {ms_step:.2} | {:.2} | {:.2} | {:.2} |",
            fwd / n_steps * 1e3,
            bwd / n_steps * 1e3,
            step / n_steps * 1e3
        );
        println!(
            "| {imp} | eval | 1000 | {:.0} | {:.2} | | | |",
            1000.0 / eval,
            eval * 1e3
        );
    }
    Ok(())
}

/// One `TransformerEncoderLayer` training step (post-norm, ReLU, batch-first), as
/// `torch_transformer.py` measures it: MSE to a random target, Adam with lr 1e-3.
fn encoder_step(args: &Args, dev: &Device, threads: usize, imp: &str) -> Result<()> {
    use candle_zoo::nn::{EncoderArgs, TransformerEncoderLayer, TransformerLayerConfig};
    let (bs, seq, d) = (32, 128, 256);
    let vm = VarMap::new();
    let cfg = TransformerLayerConfig {
        d_model: d,
        nhead: 8,
        dim_feedforward: 1024,
        dropout: args.dropout,
        ..Default::default()
    };
    let layer = TransformerEncoderLayer::new(
        &cfg,
        candle_zoo::nn::init::seeded_var_builder(&vm, 0, DType::F32, dev),
    )?;
    let mut opt = OptimizerConfig::adam().build(named_params(&vm)?)?;
    let x = Tensor::randn(0f32, 1., (bs, seq, d), dev)?;
    let target = Tensor::randn(0f32, 1., (bs, seq, d), dev)?;
    let train = EncoderArgs {
        train: true,
        ..Default::default()
    };
    let steps = args.encoder_steps.max(1);
    let t = median(args.reps.min(5), || {
        for _ in 0..steps {
            let loss = candle_zoo::candle_nn::loss::mse(&layer.forward(&x, &train)?, &target)?;
            opt.step(&loss.backward()?, 1e-3)?;
        }
        Ok(())
    })?;
    let ms = t / steps as f64 * 1e3;
    let tokens = (bs * seq) as f64 / (ms / 1e3);
    if args.json {
        println!(
            "{{\"impl\":\"{imp}\",\"pass\":\"train_step\",\"dropout\":{},\"tokens_per_s\":{tokens:.1},\"ms_per_step\":{ms:.3},\"threads\":{threads}}}",
            args.dropout
        );
    } else {
        println!(
            "| {imp} | encoder layer train step (d 256, seq 128, batch 32, dropout {}) | {tokens:.0} tokens/s | {ms:.1} ms |",
            args.dropout
        );
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Forward and forward+backward time of each op of the CNN at its batch-64 training shape.
/// Gradients are taken with respect to the op's input and its weights, as in training.
fn profile(dev: &Device, reps: usize) -> Result<()> {
    let var =
        |shape: &[usize]| -> Result<Var> { Ok(Var::from_tensor(&Tensor::randn(0f32, 0.1, shape, dev)?)?) };
    let zoo_conv = |cin: usize, cout: usize| -> Result<candle_zoo::nn::Conv2d> {
        Ok(candle_zoo::nn::Conv2d::new(
            var(&[cout, cin, 3, 3])?.as_tensor().clone(),
            Some(var(&[cout])?.as_tensor().clone()),
            Conv2dConfig::default(),
        ))
    };
    let (z1, z2, z3) = (zoo_conv(1, 32)?, zoo_conv(32, 64)?, zoo_conv(64, 64)?);
    let conv = |cin: usize, cout: usize| -> Result<(Conv2d, Var, Var)> {
        let w = var(&[cout, cin, 3, 3])?;
        let b = var(&[cout])?;
        Ok((
            Conv2d::new(
                w.as_tensor().clone(),
                Some(b.as_tensor().clone()),
                Conv2dConfig::default(),
            ),
            w,
            b,
        ))
    };
    let lin = |i: usize, o: usize| -> Result<Linear> {
        Ok(Linear::new(
            var(&[o, i])?.as_tensor().clone(),
            Some(var(&[o])?.as_tensor().clone()),
        ))
    };
    let (c1, ..) = conv(1, 32)?;
    let (c2, ..) = conv(32, 64)?;
    let (c3, ..) = conv(64, 64)?;
    let (f1, f2) = (lin(576, 64)?, lin(64, 10)?);
    type Op<'a> = Box<dyn Fn(&Tensor) -> candle_zoo::candle_core::Result<Tensor> + 'a>;
    let ops: Vec<(&str, Vec<usize>, Op)> = vec![
        (
            "conv1 1->32 3x3",
            vec![64, 1, 28, 28],
            Box::new(|x| c1.forward(x)),
        ),
        (
            "conv1 zoo (+ReLU fused)",
            vec![64, 1, 28, 28],
            Box::new(|x| z1.forward_relu(x)),
        ),
        ("relu (64,32,26,26)", vec![64, 32, 26, 26], Box::new(|x| x.relu())),
        (
            "maxpool2 zoo (64,32,26,26)",
            vec![64, 32, 26, 26],
            Box::new(|x| max_pool2d(x, 2)),
        ),
        (
            "maxpool2 candle (64,32,26,26), wrong backward",
            vec![64, 32, 26, 26],
            Box::new(|x| x.max_pool2d(2)),
        ),
        (
            "conv2 32->64 3x3",
            vec![64, 32, 13, 13],
            Box::new(|x| c2.forward(x)),
        ),
        (
            "conv2 zoo (+ReLU fused)",
            vec![64, 32, 13, 13],
            Box::new(|x| z2.forward_relu(x)),
        ),
        (
            "maxpool2 zoo (64,64,11,11)",
            vec![64, 64, 11, 11],
            Box::new(|x| max_pool2d(x, 2)),
        ),
        (
            "conv3 64->64 3x3",
            vec![64, 64, 5, 5],
            Box::new(|x| c3.forward(x)),
        ),
        (
            "conv3 zoo (+ReLU fused)",
            vec![64, 64, 5, 5],
            Box::new(|x| z3.forward_relu(x)),
        ),
        ("fc1 576->64", vec![64, 576], Box::new(|x| f1.forward(x))),
        ("fc2 64->10", vec![64, 64], Box::new(|x| f2.forward(x))),
        (
            "cross-entropy (64,10)",
            vec![64, 10],
            Box::new(|x| {
                let y = Tensor::from_vec((0..64u32).map(|i| i % 10).collect::<Vec<_>>(), 64, x.device())?;
                candle_zoo::candle_nn::loss::cross_entropy(x, &y)
            }),
        ),
    ];
    println!("\n| op (batch 64) | forward ms | backward ms |");
    println!("|---|---|---|");
    for (name, shape, op) in ops {
        let x = var(&shape)?;
        let f = median(reps, || {
            op(x.as_tensor())?.sum_all()?.to_scalar::<f32>()?;
            Ok(())
        })?;
        let fb = median(reps, || {
            op(x.as_tensor())?.sum_all()?.backward()?;
            Ok(())
        })?;
        println!("| {name} | {:.2} | {:.2} |", f * 1e3, (fb - f).max(0.0) * 1e3);
    }
    Ok(())
}
