//! Reading candle CPU storage inside our ops.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};

/// The f32 elements of a contiguous CPU tensor; `op` and `name` make the error say which input
/// of which op was wrong (`"flash attention: q must be contiguous"`).
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str, name: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: {name} must be contiguous"),
        (other, _) => candle_core::bail!("{op}: {name} must be f32, got {:?}", other.dtype()),
    }
}
