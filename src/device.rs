//! Choosing a candle `Device` by name, as the examples' `--device` flag does.

use candle_core::{Device, Result};

/// `cpu`, `cuda` (GPU 0), `metal` (GPU 0), or `auto`: CUDA if this build has it and a GPU
/// answers, else Metal likewise, else the CPU. Asking for a GPU this build was compiled
/// without is an error that says which cargo feature to enable.
pub fn device_from_name(name: &str) -> Result<Device> {
    match name.to_ascii_lowercase().as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => Device::new_cuda(0).map_err(|e| {
            candle_core::Error::Msg(format!(
                "--device cuda: {e}. Build with `--features cuda` and check that a GPU is visible (nvidia-smi)."
            ))
        }),
        "metal" => Device::new_metal(0).map_err(|e| {
            candle_core::Error::Msg(format!(
                "--device metal: {e}. Build with `--features metal` on macOS."
            ))
        }),
        "auto" => Ok(Device::new_cuda(0)
            .or_else(|_| Device::new_metal(0))
            .unwrap_or(Device::Cpu)),
        other => Err(candle_core::Error::Msg(format!(
            "unknown device `{other}`: expected cpu, cuda, metal or auto"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(device_from_name("cpu").unwrap().is_cpu());
        assert!(device_from_name("auto").is_ok());
        assert!(device_from_name("tpu")
            .unwrap_err()
            .to_string()
            .contains("unknown device"));
        if !cfg!(feature = "cuda") {
            let err = device_from_name("cuda").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
