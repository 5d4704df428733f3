//! `locksmith-bench`: the benchmark harness (default) and the torture harness
//! (`locksmith-bench torture …`).
//!
//! ```text
//! cargo run -p locksmith-bench --release -- [--store URL]... [--quick] [--json FILE]
//! cargo run -p locksmith-bench --release -- torture [OPTIONS]
//! ```

mod bench;
mod torture;

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some(cmd) if cmd.starts_with("torture") => torture::main(args),
        _ => bench::main(args),
    }
}
