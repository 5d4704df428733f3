//! A smoke run of the benchmark harness on the memory store: it runs, writes its JSON
//! report, counts no lost update and stays within the store-call budget per handoff. Speed
//! itself is not asserted here (that is the benchmark's job).

use std::process::Command;

/// Runs the bench with `args` and `--json` into a temporary file; returns the report.
fn run_bench(args: &[String]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_locksmith-bench"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    report["table"] = String::from_utf8(out.stdout).unwrap().into();
    report
}

/// The figure `scenario` / `metric` of a report.
fn figure(report: &serde_json::Value, scenario: &str, metric: &str) -> serde_json::Value {
    report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["scenario"] == scenario && f["metric"] == metric)
        .unwrap_or_else(|| panic!("no figure {scenario} / {metric}"))
        .clone()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn quick_memory_run_reports_every_figure() {
    let report = run_bench(&strings(&[
        "--quick",
        "--store",
        "memory://",
        "--runs",
        "1",
        "--budget",
        "50ms",
        "--waiters",
        "300",
        "--many",
        "2000",
        "--scenarios",
        "uncontended,parallel,contended,waiters,many",
    ]));
    let table = report["table"].as_str().unwrap();
    assert!(table.contains("| memory"), "no table rows:\n{table}");
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(!report["versions"]["sqlite"].as_str().unwrap().is_empty());
    let figure = |scenario: &str, metric: &str| figure(&report, scenario, metric);
    for k in [2, 8, 32] {
        let lost = figure(&format!("contended K={k} tasks"), "lost updates");
        assert_eq!(lost["median"].as_f64(), Some(0.0), "K={k}: {lost}");
        let cycles = figure(&format!("contended K={k} tasks"), "cycles/s");
        assert!(cycles["median"].as_f64().unwrap() > 0.0);
    }
    let calls = figure("waiters 300", "store calls/handoff");
    assert!(calls["median"].as_f64().unwrap() <= 10.0, "{calls}");
    let ratio = figure("uncontended same-name main-task", "cycles/s");
    assert!(
        ratio["ratio"].as_f64().is_some(),
        "no ratio to the raw baseline: {ratio}"
    );
    let listed = figure("many locks 2000", "purged");
    assert_eq!(listed["median"].as_f64(), Some(2000.0));
}

/// The cross-process scenario on a SQLite file: worker processes share their counter through
/// a file, so a worker that misread or miswrote it would show as lost updates or as no
/// handoffs at all.
#[test]
fn quick_sqlite_processes_run_counts_every_update() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = strings(&["--quick", "--runs", "1", "--budget", "200ms"]);
    args.push("--store".into());
    args.push(format!(
        "sqlite://{}",
        dir.path().join("locks.db").display()
    ));
    args.extend(strings(&["--scenarios", "processes"]));
    let report = run_bench(&args);
    let figure = |scenario: &str, metric: &str| {
        figure(&report, scenario, metric)["median"]
            .as_f64()
            .unwrap()
    };
    for k in [2, 8] {
        let scenario = format!("contended K={k} processes");
        assert_eq!(figure(&scenario, "lost updates"), 0.0, "K={k}");
        assert!(figure(&scenario, "cycles/s") > 0.0, "K={k}");
        // The holder changed, so handoffs were timed from the shared file's release stamps.
        let p50 = figure(&scenario, "handoff p50");
        assert!(
            p50 > 0.0 && p50 < 10_000_000.0,
            "K={k}: handoff p50 {p50} µs"
        );
    }
}
