//! Reading candle CPU storage inside our ops.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use std::sync::{Mutex, MutexGuard};

/// The f32 elements of a contiguous CPU tensor; `op` and `name` make the error say which input
/// of which op was wrong (`"flash attention: q must be contiguous"`).
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str, name: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: {name} must be contiguous"),
        (other, _) => candle_core::bail!("{op}: {name} must be f32, got {:?}", other.dtype()),
    }
}

/// [`f32_slice`] for a tensor's storage as `storage_and_layout` returns it (backward passes read
/// their saved inputs this way, without copying); fails unless it is on the CPU.
pub(crate) fn storage_f32<'a>(s: &'a Storage, l: &Layout, op: &str, name: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(s) => f32_slice(s, l, op, name),
        _ => candle_core::bail!("{op}: {name} is not on the CPU"),
    }
}

/// A gradient computed on the host, as a tensor shaped and placed like `like` (`None` stays
/// `None`: the input did not ask for one).
pub(crate) fn grad_like(v: Option<Vec<f32>>, like: &Tensor) -> Result<Option<Tensor>> {
    v.map(|v| Tensor::from_vec(v, like.shape(), like.device()))
        .transpose()
}

/// Locks what an op's forward pass kept for its backward pass (`op` names the op in the error).
pub(crate) fn lock_state<'a, T>(state: &'a Mutex<T>, op: &str) -> Result<MutexGuard<'a, T>> {
    state
        .lock()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: state lock poisoned")))
}

/// The value a forward pass saved, or an error when the backward pass runs first.
pub(crate) fn saved<'a, T>(guard: &'a MutexGuard<'_, Option<T>>, op: &str) -> Result<&'a T> {
    guard
        .as_ref()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: backward called before the forward pass ran")))
}
