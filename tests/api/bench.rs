//! `batchforge bench` runs every scenario end to end (tiny sizes; no timing is asserted).

#[test]
fn the_bench_subcommand_runs_every_scenario_and_prints_its_tables() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batchforge"))
        .args(["bench", "--items", "300", "--jobs", "40", "--clients", "4"])
        .args([
            "--commands",
            "20",
            "--footprint-items",
            "500",
            "--abandoned",
            "10",
            "--mcp-operations",
            "60",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("batchforge bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for title in [
        "## Burn-down and read path",
        "## Many small jobs over HTTP",
        "## Commands against xargs -P",
        "## Footprint and restart",
        "## MCP operations through batchforge's own server",
        "## Sandbox cost",
    ] {
        assert!(stdout.contains(title), "missing {title:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("300 no-op items queued before start"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| items/s (server timestamps) |"),
        "{stdout}"
    );
}
