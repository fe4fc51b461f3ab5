//! ONNX Runtime runs whose outputs land in caller-owned buffers (IoBinding).
//!
//! ort 2.0.0-rc.15's safe `IoBinding::bind_output` refuses tensors that view
//! caller memory, though ONNX Runtime supports them. These two calls bind such
//! outputs, bind inputs without ort's defensive copy, and run the binding
//! through ONNX Runtime's C API; creating the binding and the tensor views stays
//! in ort's safe API. The caller keeps every bound tensor view and the memory under it
//! alive until [`run`] returns.

use std::ffi::{CStr, CString};

use ort::AsPointer;
use ort::session::{IoBinding, Session};
use ort::sys::{OrtStatusPtr, OrtValue};

/// Turns an ONNX Runtime status into a result, releasing it.
fn check(status: OrtStatusPtr) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from ONNX Runtime; its message is a C string owned by the status,
    // copied out before the status is released.
    let message = unsafe {
        let text = CStr::from_ptr((api.GetErrorMessage)(status.0)).to_string_lossy().into_owned();
        (api.ReleaseStatus)(status.0);
        text
    };
    Err(message)
}

/// Binds input `name` to `value` without copying it (ort's safe `bind_input` clones the value,
/// which for caller-owned memory goes through a device copy).
pub fn bind_input(binding: &mut IoBinding, name: &str, value: &impl AsPointer<Sys = OrtValue>) -> Result<(), String> {
    let name = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: as for `bind_output`; ONNX Runtime keeps a reference to the value until it is rebound or
    // the binding is released, and the caller keeps it alive until `run` returns.
    check(unsafe { (ort::api().BindInput)(binding.ptr_mut(), name.as_ptr(), value.ptr()) })
}

/// Binds output `name` to `value`, a tensor over memory the caller keeps alive and unaliased until
/// the binding has run.
pub fn bind_output(binding: &mut IoBinding, name: &str, value: &impl AsPointer<Sys = OrtValue>) -> Result<(), String> {
    let name = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: both pointers come from live ort objects; ONNX Runtime copies the name and keeps a
    // reference to the value, which the caller keeps alive until `run` returns.
    check(unsafe { (ort::api().BindOutput)(binding.ptr_mut(), name.as_ptr(), value.ptr()) })
}

/// Runs `session` on `binding`; outputs are written into the bound buffers.
pub fn run(session: &mut Session, binding: &IoBinding) -> Result<(), String> {
    // SAFETY: live session and binding; the caller guarantees the bound memory outlives the call.
    check(unsafe { (ort::api().RunWithBinding)(session.ptr_mut(), std::ptr::null(), binding.ptr()) })
}
