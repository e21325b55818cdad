//! SKELETON — the native worker module `fcgibridge_worker._native` (issue 3).
use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_native")]
fn native(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
