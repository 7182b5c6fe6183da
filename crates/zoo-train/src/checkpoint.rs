//! Checkpoints: safetensors files written atomically, loaded with name and shape checks.
//!
//! A file is written to `<name>.tmp` in the same directory, flushed to disk, then renamed
//! over the old one, so a crash leaves either the old or the new file, never a torn one.

use crate::error::{Result, TrainError};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Saves named tensors (and string metadata) as a safetensors file, atomically.
pub fn save_tensors(
    tensors: &HashMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    path: &Path,
) -> Result<()> {
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    // safetensors needs contiguous CPU data; copying to the CPU is what saving means anyway.
    let cpu: Vec<(String, Tensor)> = sorted
        .into_iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
        .map_err(|e| TrainError::checkpoint(path, format!("cannot serialize: {e}")))?;
    write_atomic(path, &bytes)
}

/// Reads a safetensors file: its tensors (on `device`) and its string metadata.
pub fn load_tensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        TrainError::checkpoint(
            path,
            format!("not a valid safetensors file ({e}): corrupt or truncated"),
        )
    })?;
    let metadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| TrainError::checkpoint(path, format!("cannot read tensors: {e}")))?;
    Ok((tensors, metadata))
}

/// Saves every variable of `varmap` to `path`, atomically.
pub fn save_varmap(varmap: &VarMap, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    save_tensors(&tensors, metadata, path)
}

/// Loads `path` into the variables of `varmap`, which must match it exactly: every variable
/// present with the same shape, and no extra tensors. Values are cast to each variable's
/// dtype and device. Returns the file's metadata.
pub fn load_varmap(varmap: &VarMap, path: &Path) -> Result<BTreeMap<String, String>> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    let device = vars
        .values()
        .next()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let (tensors, metadata) = load_tensors(path, &device)?;
    let mut problems = Vec::new();
    let mut missing: Vec<&String> = vars.keys().filter(|k| !tensors.contains_key(*k)).collect();
    missing.sort();
    if !missing.is_empty() {
        problems.push(format!("missing tensors {missing:?}"));
    }
    let mut extra: Vec<&String> = tensors.keys().filter(|k| !vars.contains_key(*k)).collect();
    extra.sort();
    if !extra.is_empty() {
        problems.push(format!("unexpected tensors {extra:?}"));
    }
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in &names {
        if let (Some(var), Some(t)) = (vars.get(*name), tensors.get(*name)) {
            if var.shape() != t.shape() {
                problems.push(format!(
                    "`{name}` has shape {:?} in the file, the model expects {:?}",
                    t.shape(),
                    var.shape()
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(TrainError::checkpoint(
            path,
            format!(
                "does not match the model: {} (was it saved from a different model or configuration?)",
                problems.join("; ")
            ),
        ));
    }
    for name in names {
        if let (Some(var), Some(t)) = (vars.get(name), tensors.get(name)) {
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn round_trip_and_mismatch_errors() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let a = vb.get_with_hints((2, 3), "a", candle_nn::Init::Randn { mean: 0., stdev: 1. })?;
        let meta: BTreeMap<String, String> = [("epoch".to_string(), "3".to_string())].into();
        save_varmap(&vm, &path, &meta)?;
        assert!(!tmp_path(&path).exists());
        let before = a.to_vec2::<f32>()?;
        vm.data().lock().unwrap()["a"].set(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?)?;
        assert_eq!(load_varmap(&vm, &path)?, meta);
        assert_eq!(vm.data().lock().unwrap()["a"].to_vec2::<f32>()?, before);

        let other = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&other, DType::F32, &Device::Cpu);
        vb.get((3, 2), "a")?;
        vb.get(4, "b")?;
        let err = load_varmap(&other, &path).unwrap_err().to_string();
        assert!(
            err.contains("missing tensors [\"b\"]") && err.contains("shape"),
            "{err}"
        );

        std::fs::write(&path, b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json").unwrap();
        let err = load_varmap(&vm, &path).unwrap_err().to_string();
        assert!(
            err.contains("m.safetensors") && err.contains("not a valid"),
            "{err}"
        );
        Ok(())
    }
}
