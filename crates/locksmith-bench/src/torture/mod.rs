//! The torture harness (issue 10).

use std::ffi::OsString;
use std::process::ExitCode;

pub(crate) fn main(_args: Vec<OsString>) -> ExitCode {
    eprintln!("locksmith-bench torture: not built yet");
    ExitCode::FAILURE
}
