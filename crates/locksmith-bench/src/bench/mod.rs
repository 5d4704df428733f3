//! The benchmark harness (issue 9).

use std::ffi::OsString;
use std::process::ExitCode;

pub(crate) fn main(_args: Vec<OsString>) -> ExitCode {
    eprintln!("locksmith-bench: benchmarks are not built yet");
    ExitCode::FAILURE
}
