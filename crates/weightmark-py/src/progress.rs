//! The library's [`Progress`] reports, forwarded to an optional Python
//! callable as `callback(stage, done, total)` (bytes of tensor data).
//!
//! The work runs with the GIL released; each report takes the GIL for the
//! call only. Calls are serialised, so `done` never goes backwards within a
//! stage. If the callable raises, it is not called again, and its exception
//! is raised once the work has finished (the work itself is not stopped).

use std::sync::Mutex;

use pyo3::prelude::*;
use weightmark::Progress;

/// Where the current stage stands.
#[derive(Default)]
struct Stage {
    name: String,
    done: u64,
    total: u64,
    reported: u64,
}

/// Forwards progress to a Python callable (or nowhere).
pub struct PyProgress {
    callback: Option<Py<PyAny>>,
    stage: Mutex<Stage>,
    error: Mutex<Option<PyErr>>,
}

impl PyProgress {
    /// Reports to `callback`, or nowhere for `None`.
    pub fn new(callback: Option<Py<PyAny>>) -> PyProgress {
        PyProgress { callback, stage: Mutex::new(Stage::default()), error: Mutex::new(None) }
    }

    /// The callable's exception, if it raised one.
    pub fn take_error(&self) -> Option<PyErr> {
        self.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Updates the stage with `update` and reports it, holding the stage lock
    /// across the call so reports are serialised and in order.
    fn report(&self, update: impl FnOnce(&mut Stage) -> bool) {
        let Some(callback) = &self.callback else { return };
        let mut stage = self.stage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !update(&mut stage) {
            return;
        }
        let mut error = self.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if error.is_some() {
            return;
        }
        stage.reported = stage.done;
        let args = (stage.name.clone(), stage.done, stage.total);
        if let Err(e) = Python::attach(|py| callback.call1(py, args).map(drop)) {
            *error = Some(e);
        }
    }
}

impl Progress for PyProgress {
    fn start(&self, phase: &str, total: u64) {
        self.report(|s| {
            *s = Stage { name: phase.to_string(), done: 0, total, reported: 0 };
            true
        });
    }

    fn advance(&self, bytes: u64) {
        self.report(|s| {
            s.done = s.done.saturating_add(bytes).min(s.total);
            true
        });
    }

    fn finish(&self) {
        // One last report at 100% unless the last one already said so.
        self.report(|s| {
            s.done = s.total;
            s.reported != s.total
        });
    }
}
