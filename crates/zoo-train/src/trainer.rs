//! The training loop: generic over the model (`candle_core::ModuleT`), the data
//! ([`zoo_data::BatchSource`]) and the objective ([`Objective`]).
//!
//! Files in the run directory (`TrainerConfig::out_dir`), each written atomically:
//! `model.safetensors` (latest weights, every epoch), `best.safetensors` (best held-out score),
//! `optimizer.safetensors` (optimizer buffers), `trainer_state.json` (epoch, step, best
//! metric, seed, optimizer, history), `metrics.jsonl` (one JSON line per epoch) and
//! `curves.svg`. `resume` continues from them to the same result as a run that never stopped.

use crate::checkpoint::{load_tensors, load_varmap, save_tensors, save_varmap, write_atomic};
use crate::clip::clip_grad_norm;
use crate::curves::write_curves_svg;
use crate::error::{Result, TrainError};
use crate::metrics::{EpochMetrics, EvalMetrics, Running};
use crate::objective::{CrossEntropy, Objective};
use crate::optim::{named_params, GroupedOptimizer, NamedParams, Optimizer, OptimizerConfig};
use crate::progress::{EpochProgress, ProgressMode};
use crate::schedule::LrSchedule;
use candle_core::{DType, ModuleT, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;
use zoo_data::Batch;
use zoo_data::{epoch_batches, BatchSource};

/// Everything that shapes a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainerConfig {
    /// Epochs to train (in total, counting those done before a resume).
    pub epochs: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Optimizer and its hyper-parameters.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule, evaluated per step.
    pub schedule: LrSchedule,
    /// Clip gradients to this global L2 norm.
    pub grad_clip: Option<f64>,
    /// Seed of the run (recorded; the data order and initialization use it through their own
    /// constructors).
    pub seed: u64,
    /// Run directory for checkpoints, metrics and curves; `None` writes nothing.
    pub out_dir: Option<PathBuf>,
    /// Continue from the state in `out_dir` if there is one.
    pub resume: bool,
    /// Progress display within an epoch.
    pub progress: ProgressMode,
    /// Suppress the per-epoch summary line.
    pub quiet: bool,
    /// What one sample is called in throughput figures (`img` → `img/s`).
    pub item_name: String,
    /// What the held-out set is called in the summary line (`test_loss`, `test_acc`).
    pub eval_name: String,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            lr: 1e-3,
            optimizer: OptimizerConfig::adam(),
            schedule: LrSchedule::Constant,
            grad_clip: None,
            seed: 0,
            out_dir: None,
            resume: false,
            progress: ProgressMode::Auto,
            quiet: false,
            item_name: "item".into(),
            eval_name: "eval".into(),
        }
    }
}

/// What `trainer_state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Last completed epoch (1-based).
    pub epoch: usize,
    /// Optimizer steps taken.
    pub global_step: usize,
    /// Seed of the run.
    pub seed: u64,
    /// Best score so far (higher is better): eval accuracy, else minus eval loss, else minus train loss.
    pub best_metric: Option<f64>,
    /// The epoch that scored `best_metric`.
    pub best_epoch: Option<usize>,
    /// The optimizer's configuration; its buffers are in `optimizer.safetensors`.
    pub optimizer: OptimizerConfig,
    /// Steps the optimizer has taken (Adam's bias correction depends on it).
    pub optimizer_steps: usize,
    /// The rest of the configuration, for checking a resume against.
    pub config: TrainerConfig,
    /// Metrics of every completed epoch.
    pub history: Vec<EpochMetrics>,
}

/// The outcome of [`Trainer::fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Metrics of every completed epoch, including those before a resume.
    pub history: Vec<EpochMetrics>,
    /// Best score and its epoch (see [`TrainerState::best_metric`]).
    pub best: Option<(usize, f64)>,
    /// The epoch this run resumed after, if it resumed.
    pub resumed_after: Option<usize>,
}

/// File names inside the run directory.
pub mod files {
    /// Latest weights.
    pub const MODEL: &str = "model.safetensors";
    /// Best weights by held-out score.
    pub const BEST: &str = "best.safetensors";
    /// Optimizer buffers.
    pub const OPTIMIZER: &str = "optimizer.safetensors";
    /// Run state.
    pub const STATE: &str = "trainer_state.json";
    /// One JSON line per epoch.
    pub const METRICS: &str = "metrics.jsonl";
    /// Training curves.
    pub const CURVES: &str = "curves.svg";
}

type EpochHook = Box<dyn FnMut(&EpochMetrics) -> ControlFlow<()>>;

/// Trains a model's parameters on a data set; see the module docs.
pub struct Trainer {
    cfg: TrainerConfig,
    varmap: VarMap,
    params: NamedParams,
    /// Learning-rate multiplier per parameter name.
    lr_scale: Option<LrScale>,
    objective: Box<dyn Objective>,
    on_epoch_end: Option<EpochHook>,
    /// Stop after the first epoch that ends past this much training time.
    time_budget: Option<std::time::Duration>,
}

/// A learning-rate multiplier for a parameter name.
type LrScale = Box<dyn Fn(&str) -> f64>;

impl Trainer {
    /// A trainer that optimizes every variable of `varmap` with cross-entropy.
    pub fn new(cfg: TrainerConfig, varmap: &VarMap) -> Result<Self> {
        if cfg.epochs == 0 {
            return Err(TrainError::Config("epochs must be at least 1".into()));
        }
        if !(cfg.lr.is_finite() && cfg.lr >= 0.0) {
            return Err(TrainError::Config(format!(
                "learning rate {} must be finite and >= 0",
                cfg.lr
            )));
        }
        if let Some(c) = cfg.grad_clip {
            if c.is_nan() || c <= 0.0 {
                return Err(TrainError::Config(format!("grad_clip {c} must be positive")));
            }
        }
        Ok(Self {
            params: named_params(varmap)?,
            lr_scale: None,
            varmap: varmap.clone(),
            cfg,
            objective: Box::new(CrossEntropy),
            on_epoch_end: None,
            time_budget: None,
        })
    }

    /// Optimizes only these parameters (e.g. a new head over a frozen backbone); all of
    /// `varmap` is still saved in checkpoints.
    pub fn with_params(mut self, params: NamedParams) -> Self {
        self.params = params;
        self
    }

    /// Discriminative learning rates: parameter `name` is updated with `lr · scale(name)`
    /// (e.g. layer-wise decay when fine-tuning a pretrained encoder). Parameters with equal
    /// scales share one optimizer group.
    pub fn with_lr_scales(mut self, scale: impl Fn(&str) -> f64 + 'static) -> Self {
        self.lr_scale = Some(Box::new(scale));
        self
    }

    /// Minimizes this objective instead of cross-entropy.
    pub fn with_objective(mut self, objective: impl Objective + 'static) -> Self {
        self.objective = Box::new(objective);
        self
    }

    /// Stops after the first epoch that ends more than `minutes` after `fit` started (the
    /// epoch is finished, evaluated and checkpointed first); the cosine schedule still decays
    /// over the configured epochs.
    pub fn with_time_budget(mut self, minutes: f64) -> Self {
        self.time_budget = (minutes.is_finite() && minutes >= 0.0)
            .then(|| std::time::Duration::from_secs_f64(minutes * 60.0));
        self
    }

    /// Calls `hook` after each epoch's checkpoint is written; `ControlFlow::Break` stops
    /// training there (early stopping, or an interruption in tests).
    pub fn on_epoch_end(mut self, hook: impl FnMut(&EpochMetrics) -> ControlFlow<()> + 'static) -> Self {
        self.on_epoch_end = Some(Box::new(hook));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.cfg
    }

    fn say(&self, line: &str) {
        if !self.cfg.quiet {
            println!("{line}");
        }
    }

    /// Trains `model` on `train`, evaluating on `eval` after every epoch.
    pub fn fit<M: BatchModel + ?Sized>(
        &mut self,
        model: &M,
        train: &dyn BatchSource,
        eval: Option<&dyn BatchSource>,
    ) -> Result<TrainReport> {
        let fit_started = Instant::now();
        let steps_per_epoch = train.num_batches();
        if steps_per_epoch == 0 {
            return Err(TrainError::Config("the training set is empty".into()));
        }
        let total_steps = steps_per_epoch * self.cfg.epochs;
        let mut optimizer: Box<dyn Optimizer> = match &self.lr_scale {
            None => self.cfg.optimizer.build(self.params.clone())?,
            Some(scale_of) => {
                // Group by scale (bit pattern: scales are compared exactly), in first-seen order.
                let mut groups: Vec<(f64, NamedParams)> = Vec::new();
                for (name, var) in &self.params {
                    let s = scale_of(name);
                    match groups.iter_mut().find(|(g, _)| g.to_bits() == s.to_bits()) {
                        Some((_, ps)) => ps.push((name.clone(), var.clone())),
                        None => groups.push((s, vec![(name.clone(), var.clone())])),
                    }
                }
                Box::new(GroupedOptimizer::new(&self.cfg.optimizer, groups)?)
            }
        };
        let mut state = TrainerState {
            epoch: 0,
            global_step: 0,
            seed: self.cfg.seed,
            best_metric: None,
            best_epoch: None,
            optimizer: self.cfg.optimizer.clone(),
            optimizer_steps: 0,
            config: self.cfg.clone(),
            history: Vec::new(),
        };
        let mut resumed_after = None;
        if let Some(dir) = self.cfg.out_dir.clone() {
            std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
            if self.cfg.resume && dir.join(files::STATE).exists() {
                state = self.restore(&dir, optimizer.as_mut())?;
                resumed_after = Some(state.epoch);
                self.say(&format!(
                    "resuming {} after epoch {} (step {})",
                    dir.display(),
                    state.epoch,
                    state.global_step
                ));
            }
        }

        for epoch in state.epoch + 1..=self.cfg.epochs {
            let progress = EpochProgress::new(
                self.cfg.progress,
                epoch,
                self.cfg.epochs,
                steps_per_epoch,
                &self.cfg.item_name,
            );
            let mut running = Running::default();
            let mut lr = self.cfg.lr;
            let started = Instant::now();
            for (i, batch) in epoch_batches(train, epoch - 1).enumerate() {
                let batch = batch?;
                lr = self
                    .cfg
                    .schedule
                    .lr(self.cfg.lr, state.global_step, steps_per_epoch, total_steps);
                let outputs = model.forward_batch(&batch, true)?;
                let loss = self.objective.loss(&outputs, &batch.targets)?;
                let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                if !value.is_finite() {
                    progress.finish();
                    return Err(self.non_finite(epoch, state.global_step + 1, value));
                }
                let mut grads = loss.backward()?;
                if let Some(max_norm) = self.cfg.grad_clip {
                    clip_grad_norm(&mut grads, &self.params, max_norm)?;
                }
                optimizer.step(&grads, lr)?;
                state.global_step += 1;
                let correct = self.objective.correct(&outputs, &batch.targets)?;
                running.add(value as f64, self.objective.count(&batch.targets)?, correct);
                progress.update(i + 1, &running);
            }
            progress.finish();
            let train_time = started.elapsed().as_secs_f64();
            let eval_metrics = match eval {
                Some(e) => Some(evaluate(model, e, self.objective.as_ref())?),
                None => None,
            };
            let metrics = EpochMetrics {
                epoch,
                step: state.global_step,
                lr,
                train_loss: running.loss(),
                train_acc: running.accuracy(),
                eval_loss: eval_metrics.map(|m| m.loss),
                eval_acc: eval_metrics.and_then(|m| m.accuracy),
                train_time_s: train_time,
                eval_time_s: eval_metrics.map(|m| m.time_s).unwrap_or(0.0),
                items_per_s: running.items() as f64 / train_time.max(1e-9),
            };
            self.say(&self.summary_line(&metrics));
            let score = metrics
                .eval_acc
                .or(metrics.eval_loss.map(|l| -l))
                .unwrap_or(-metrics.train_loss);
            let improved = state.best_metric.is_none_or(|b| score > b);
            if improved {
                state.best_metric = Some(score);
                state.best_epoch = Some(epoch);
            }
            state.epoch = epoch;
            state.optimizer_steps = optimizer.steps();
            state.history.push(metrics.clone());
            if let Some(dir) = &self.cfg.out_dir {
                self.save(dir, &state, optimizer.as_ref(), improved)?;
            }
            if let Some(hook) = self.on_epoch_end.as_mut() {
                if hook(&metrics).is_break() {
                    break;
                }
            }
            if self.time_budget.is_some_and(|b| fit_started.elapsed() >= b) {
                break;
            }
        }
        Ok(TrainReport {
            best: state.best_epoch.zip(state.best_metric),
            history: state.history,
            resumed_after,
        })
    }

    fn summary_line(&self, m: &EpochMetrics) -> String {
        let mut line = format!(
            "epoch {}/{} train_loss {:.4}",
            m.epoch, self.cfg.epochs, m.train_loss
        );
        if let Some(l) = m.eval_loss {
            line += &format!(" {}_loss {l:.4}", self.cfg.eval_name);
        }
        if let Some(a) = m.eval_acc {
            line += &format!(" {}_acc {:.2}%", self.cfg.eval_name, a * 100.0);
        }
        line + &format!(
            " time {:.1}s {:.0} {}/s",
            m.train_time_s, m.items_per_s, self.cfg.item_name
        )
    }

    fn non_finite(&self, epoch: usize, step: usize, value: f32) -> TrainError {
        let checkpoint_note = match &self.cfg.out_dir {
            Some(dir) if dir.join(files::MODEL).exists() => format!(
                "The last good checkpoint is {} (unchanged); lower the learning rate or enable gradient clipping.",
                dir.join(files::MODEL).display()
            ),
            _ => "No checkpoint was written; lower the learning rate or enable gradient clipping.".into(),
        };
        TrainError::NonFiniteLoss {
            epoch,
            step,
            value,
            checkpoint_note,
        }
    }

    fn save(
        &self,
        dir: &Path,
        state: &TrainerState,
        optimizer: &dyn Optimizer,
        improved: bool,
    ) -> Result<()> {
        let meta: BTreeMap<String, String> = [
            ("epoch".to_string(), state.epoch.to_string()),
            ("global_step".to_string(), state.global_step.to_string()),
        ]
        .into();
        save_varmap(&self.varmap, &dir.join(files::MODEL), &meta)?;
        save_tensors(&optimizer.state(), &meta, &dir.join(files::OPTIMIZER))?;
        if improved {
            save_varmap(&self.varmap, &dir.join(files::BEST), &meta)?;
        }
        let mut lines = String::new();
        for m in &state.history {
            lines += &serde_json::to_string(m).map_err(|e| TrainError::Config(e.to_string()))?;
            lines.push('\n');
        }
        write_atomic(&dir.join(files::METRICS), lines.as_bytes())?;
        write_curves_svg(&state.history, &dir.join(files::CURVES))?;
        // The state goes last: it only ever points at files that are already complete.
        let json = serde_json::to_string_pretty(state).map_err(|e| TrainError::Config(e.to_string()))?;
        write_atomic(&dir.join(files::STATE), json.as_bytes())
    }

    fn restore(&self, dir: &Path, optimizer: &mut dyn Optimizer) -> Result<TrainerState> {
        let state_path = dir.join(files::STATE);
        let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
        let state: TrainerState = serde_json::from_str(&text)
            .map_err(|e| TrainError::checkpoint(&state_path, format!("unreadable run state: {e}")))?;
        let c = &state.config;
        let mut diffs = Vec::new();
        if c.seed != self.cfg.seed {
            diffs.push(format!("seed {} (now {})", c.seed, self.cfg.seed));
        }
        if c.optimizer != self.cfg.optimizer {
            diffs.push(format!(
                "optimizer {:?} (now {:?})",
                c.optimizer, self.cfg.optimizer
            ));
        }
        if c.lr != self.cfg.lr || c.schedule != self.cfg.schedule || c.grad_clip != self.cfg.grad_clip {
            diffs.push(format!(
                "lr {} / schedule {:?} / clip {:?} (now {} / {:?} / {:?})",
                c.lr, c.schedule, c.grad_clip, self.cfg.lr, self.cfg.schedule, self.cfg.grad_clip
            ));
        }
        if !diffs.is_empty() {
            return Err(TrainError::checkpoint(
                &state_path,
                format!(
                    "cannot resume with a different configuration: the run used {}. Use the same settings, or a new run directory.",
                    diffs.join(", ")
                ),
            ));
        }
        let epoch = state.epoch.to_string();
        for (file, meta) in [
            (files::MODEL, load_varmap(&self.varmap, &dir.join(files::MODEL))?),
            (files::OPTIMIZER, {
                let device = self
                    .params
                    .first()
                    .map(|(_, v)| v.device().clone())
                    .unwrap_or(candle_core::Device::Cpu);
                let (buffers, meta) = load_tensors(&dir.join(files::OPTIMIZER), &device)?;
                optimizer
                    .load_state(&buffers, state.optimizer_steps)
                    .map_err(|e| TrainError::checkpoint(dir.join(files::OPTIMIZER), e.to_string()))?;
                meta
            }),
        ] {
            if meta.get("epoch") != Some(&epoch) {
                return Err(TrainError::checkpoint(
                    dir.join(file),
                    format!(
                        "is from epoch {:?} but {} says epoch {epoch}: the run was interrupted while saving; start a new run",
                        meta.get("epoch"),
                        files::STATE
                    ),
                ));
            }
        }
        Ok(state)
    }
}

/// A model the trainer can run on a [`Batch`]: every `candle_core::ModuleT` (on
/// `batch.inputs`), or any model that needs more of the batch (e.g. a translator reading the
/// decoder input from `batch.extra`).
pub trait BatchModel {
    /// Outputs for `batch` (compared with `batch.targets` by the objective).
    fn forward_batch(&self, batch: &Batch, train: bool) -> candle_core::Result<Tensor>;
}

impl<M: ModuleT + ?Sized> BatchModel for M {
    fn forward_batch(&self, batch: &Batch, train: bool) -> candle_core::Result<Tensor> {
        self.forward_t(&batch.inputs, train)
    }
}

/// Mean loss and accuracy of `model` (in evaluation mode) over one pass of `data`.
pub fn evaluate<M: BatchModel + ?Sized>(
    model: &M,
    data: &dyn BatchSource,
    objective: &dyn Objective,
) -> Result<EvalMetrics> {
    let started = Instant::now();
    let mut running = Running::default();
    for batch in epoch_batches(data, 0) {
        let batch = batch?;
        let outputs = model.forward_batch(&batch, false)?.detach();
        let loss = objective.loss(&outputs, &batch.targets)?;
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64;
        let correct = objective.correct(&outputs, &batch.targets)?;
        running.add(value, objective.count(&batch.targets)?, correct);
    }
    Ok(EvalMetrics {
        loss: running.loss(),
        accuracy: running.accuracy(),
        items: running.items(),
        time_s: started.elapsed().as_secs_f64(),
    })
}
