//! Finding and checking pretrained files: a local directory, or a Hugging Face hub repository
//! through hf-hub's cache (offline mode respected, see `zoo_data::hub`).

use super::bert::{Bert, BertConfig};
use super::classify::{BertForSequenceClassification, ClassifierInput, ProblemType};
use super::msg;
use candle_core::{DType, Device, Result};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};
use zoo_data::hub::{model_file, HubOptions};

/// The files of a pretrained model, resolved to local paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PretrainedFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors`, or `pytorch_model.bin` when there is no safetensors file.
    pub weights: PathBuf,
    /// `tokenizer.json`, when the repository has one.
    pub tokenizer: Option<PathBuf>,
    /// `sentence_bert_config.json` (sentence-transformers' `max_seq_length`), when present.
    pub sentence_config: Option<PathBuf>,
}

impl PretrainedFiles {
    /// The text of `config.json`; the error names the file.
    pub fn config_text(&self) -> Result<String> {
        std::fs::read_to_string(&self.config).map_err(|e| msg(format!("{}: {e}", self.config.display())))
    }

    /// `repo_or_dir` is a directory holding the files, or a hub id such as
    /// `sentence-transformers/all-MiniLM-L6-v2` (cache first; downloads only when online).
    pub fn resolve(repo_or_dir: &str, opts: &HubOptions) -> Result<Self> {
        let dir = Path::new(repo_or_dir);
        if dir.is_dir() {
            let opt = |f: &str| Some(dir.join(f)).filter(|p| p.is_file());
            let config = opt("config.json")
                .ok_or_else(|| msg(format!("{}: no config.json in this directory", dir.display())))?;
            let weights = opt("model.safetensors")
                .or_else(|| opt("pytorch_model.bin"))
                .ok_or_else(|| {
                    msg(format!(
                        "{}: neither model.safetensors nor pytorch_model.bin in this directory",
                        dir.display()
                    ))
                })?;
            return Ok(Self {
                config,
                weights,
                tokenizer: opt("tokenizer.json"),
                sentence_config: opt("sentence_bert_config.json"),
            });
        }
        if repo_or_dir.split('/').count() != 2 {
            return Err(msg(format!(
                "{repo_or_dir:?} is neither a directory nor a hub repository id (owner/name)"
            )));
        }
        let get = |f: &str| model_file(repo_or_dir, f, opts);
        let config = get("config.json").map_err(msg)?;
        let weights = match get("model.safetensors") {
            Ok(p) => p,
            Err(e) => get("pytorch_model.bin").map_err(|e2| {
                msg(format!(
                    "{repo_or_dir}: no weights: model.safetensors ({e}); pytorch_model.bin ({e2})"
                ))
            })?,
        };
        Ok(Self {
            config,
            weights,
            tokenizer: get("tokenizer.json").ok(),
            sentence_config: get("sentence_bert_config.json").ok(),
        })
    }

    /// A `VarBuilder` over the weights (memory-mapped safetensors, or a PyTorch pickle).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        let w = &self.weights;
        if w.extension().is_some_and(|e| e == "bin") {
            return VarBuilder::from_pth(w, dtype, device)
                .map_err(|e| msg(format!("{}: cannot read the PyTorch weights: {e}", w.display())));
        }
        // SAFETY: the file is memory-mapped read-only; the zoo never writes to it, and a file
        // changed by another process while mapped is outside what any mmap reader can defend.
        unsafe { VarBuilder::from_mmaped_safetensors(std::slice::from_ref(w), dtype, device) }
            .map_err(|e| msg(format!("{}: not a readable safetensors file ({e})", w.display())))
    }

    /// sentence-transformers' `max_seq_length`, when the repository says.
    pub fn max_seq_length(&self) -> Result<Option<usize>> {
        let Some(p) = &self.sentence_config else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(p).map_err(|e| msg(format!("{}: {e}", p.display())))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| msg(format!("{}: invalid JSON: {e}", p.display())))?;
        Ok(v.get("max_seq_length")
            .and_then(|x| x.as_u64())
            .map(|x| x as usize))
    }
}

/// Checks a safetensors file against the parameters a model expects (`(name, shape)`), and
/// lists every missing tensor and every shape mismatch in one error, so a config that does not
/// fit its weights says how. Names may carry one common prefix in the file (`bert.`).
pub fn check_safetensors(path: &Path, expected: &[(String, Vec<usize>)]) -> Result<()> {
    // SAFETY: read-only memory map, as in `PretrainedFiles::var_builder`.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(|e| {
        msg(format!(
            "{}: not a readable safetensors file ({e})",
            path.display()
        ))
    })?;
    let stored: std::collections::HashMap<String, Vec<usize>> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    let prefix = if stored.keys().any(|k| k.starts_with("bert.")) {
        "bert."
    } else {
        ""
    };
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match stored.get(&format!("{prefix}{name}")) {
            None => problems.push(format!("missing {prefix}{name} {shape:?}")),
            Some(s) if s != shape => problems.push(format!(
                "{prefix}{name}: file has {s:?}, config expects {shape:?}"
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    problems.truncate(12);
    Err(msg(format!(
        "{}: the weights do not match the config ({n} problems): {}{}",
        path.display(),
        problems.join("; "),
        if n > 12 { "; …" } else { "" }
    )))
}

impl Bert {
    /// Loads a BERT encoder (and its pooler when the weights have one) from a directory or a
    /// hub repository, f32 on `device`. Returns the files too (tokenizer, sentence config).
    pub fn from_pretrained(
        repo_or_dir: &str,
        opts: &HubOptions,
        device: &Device,
    ) -> Result<(Self, PretrainedFiles)> {
        let files = PretrainedFiles::resolve(repo_or_dir, opts)?;
        let text = files.config_text()?;
        let cfg =
            BertConfig::from_json(&text).map_err(|e| msg(format!("{}: {e}", files.config.display())))?;
        cfg.validate()?;
        let is_safetensors = files.weights.extension().is_some_and(|e| e == "safetensors");
        if is_safetensors {
            check_safetensors(&files.weights, &cfg.parameter_shapes(false))?;
        }
        let vb = files.var_builder(DType::F32, device)?;
        let pooler =
            vb.contains_tensor("pooler.dense.weight") || vb.contains_tensor("bert.pooler.dense.weight");
        let model = Bert::new(&cfg, vb, pooler)?;
        Ok((model, files))
    }
}

/// Copies the tensors of a safetensors file into the variables of `varmap` with the same name
/// (or the same name with or without a `bert.` prefix: a `BertModel` file fills the backbone of
/// a task model, and back), shapes checked. Returns the
/// names of the variables the file did not have (a new head, say), sorted; the caller decides
/// whether that is fine.
pub fn load_into_varmap(varmap: &candle_nn::VarMap, path: &Path) -> Result<Vec<String>> {
    // SAFETY: read-only memory map, as in `PretrainedFiles::var_builder`.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(|e| {
        msg(format!(
            "{}: not a readable safetensors file ({e})",
            path.display()
        ))
    })?;
    let stored: std::collections::HashSet<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    let vars = varmap.data().lock().map_err(|_| msg("VarMap lock poisoned"))?;
    let mut missing = Vec::new();
    for (name, var) in vars.iter() {
        let bare = name.strip_prefix("bert.").unwrap_or(name);
        let key = [name.clone(), format!("bert.{name}"), bare.to_string()]
            .into_iter()
            .find(|k| stored.contains(k));
        let Some(key) = key else {
            missing.push(name.clone());
            continue;
        };
        let t = st.load(&key, var.device())?.to_dtype(var.dtype())?;
        if t.shape() != var.shape() {
            return Err(msg(format!(
                "{}: {key} has shape {:?}, the model expects {:?}",
                path.display(),
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t)?;
    }
    missing.sort();
    Ok(missing)
}

impl BertForSequenceClassification {
    /// Loads a fine-tuned classifier saved as `model.safetensors` (`bert.*`, `classifier.*`) +
    /// `config.json` (the BERT config plus `num_labels` or `id2label`, optional `problem_type`
    /// and `classifier_input`) from a directory or hub repository; LoRA adapters are loaded
    /// from `adapter/` when the config has a `lora` entry. Returns the files too.
    pub fn from_pretrained(
        repo_or_dir: &str,
        opts: &HubOptions,
        device: &Device,
    ) -> Result<(Self, PretrainedFiles)> {
        let files = PretrainedFiles::resolve(repo_or_dir, opts)?;
        let text = files.config_text()?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| msg(format!("{}: invalid JSON: {e}", files.config.display())))?;
        let cfg = BertConfig::from_json(&text)?;
        let num_labels = raw
            .get("num_labels")
            .and_then(|v| v.as_u64())
            .map(|n| n as usize)
            .or_else(|| raw.get("id2label").and_then(|m| m.as_object()).map(|m| m.len()))
            .ok_or_else(|| {
                msg(format!(
                    "{}: neither num_labels nor id2label",
                    files.config.display()
                ))
            })?;
        let field = |k: &str| raw.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let problem_type: ProblemType = serde_json::from_value(field("problem_type")).unwrap_or_default();
        let input: ClassifierInput = serde_json::from_value(field("classifier_input")).unwrap_or_default();
        let vb = files.var_builder(DType::F32, device)?;
        let lora_cfg: Option<zoo_nn::LoraConfig> = match raw.get("lora") {
            Some(v) => Some(
                serde_json::from_value(v.clone())
                    .map_err(|e| msg(format!("{}: lora: {e}", files.config.display())))?,
            ),
            None => None,
        };
        let adapters = candle_nn::VarMap::new();
        let lora = lora_cfg
            .as_ref()
            .map(|c| (c, VarBuilder::from_varmap(&adapters, DType::F32, device)));
        let model = Self::new_with_lora(&cfg, num_labels, problem_type, input, vb, lora)?;
        if lora_cfg.is_some() {
            let dir = files.config.parent().unwrap_or(Path::new(".")).join("adapter");
            zoo_nn::lora::load_adapters(&adapters, &dir)?;
        }
        Ok((model, files))
    }
}
