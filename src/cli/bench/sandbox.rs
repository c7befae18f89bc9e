//! The commands scenario's sandbox pairing: the same validation batch with `--sandbox
//! none` and `--sandbox bwrap`, one server after the other in one run, for `true` and for
//! 50 ms of work, with the per-item spawn overhead the sandbox adds.

use super::{call, client, setup, table, BenchArgs, Result, Server};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// `parallel` (and the server's concurrency) of the sandbox pairing.
const PARALLEL: u32 = 2;

/// Runs `n` items of `command` at `parallel` 2 on a fresh server in `mode`; answers the
/// wall time from submit to completion, in seconds.
async fn batch(dir: &Path, mode: &str, label: &str, command: &str, n: usize) -> Result<f64> {
    let url = format!(
        "sqlite://{}",
        dir.join(format!("sandbox-{label}-{mode}.db")).display()
    );
    let server = Server::start_on(
        dir,
        &url,
        &format!("server-sandbox-{label}-{mode}.log"),
        &[
            "--sandbox".to_string(),
            mode.to_string(),
            "--concurrency".to_string(),
            PARALLEL.to_string(),
        ],
    )?;
    let client = client();
    let targets: Vec<_> = (0..n)
        .map(|i| json!({"id": i.to_string(), "path": "f"}))
        .collect();
    let t0 = Instant::now();
    let job = call(
        &client,
        "POST",
        &format!("{}/batch/validation", server.base),
        Some(&json!({"targets": targets, "check_command": command, "parallel": PARALLEL})),
    )
    .await?;
    let url = format!(
        "{}/batch/jobs/{}",
        server.base,
        job["job_id"].as_str().unwrap_or_default()
    );
    let job = loop {
        let job = call(&client, "GET", &url, None).await?;
        if job["status"] == "completed" || job["status"] == "failed" {
            break job;
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    };
    let wall = t0.elapsed().as_secs_f64();
    server.stop()?;
    let ok = job["result"]["summary"]["successful"].as_u64().unwrap_or(0);
    if ok != n as u64 {
        return Err(setup(format!(
            "--sandbox {mode}: only {ok} of {n} '{command}' items passed"
        )));
    }
    Ok(wall)
}

/// The pairing; prints why it is skipped where bubblewrap is unusable.
pub(super) async fn pairing(args: &BenchArgs, dir: &Path) -> Result<()> {
    let n = args.sandbox_commands.unwrap_or(args.commands.min(2000));
    let usable = std::process::Command::new("bwrap")
        .args(batchforge::sandbox::bwrap::PROBE_ARGS)
        .arg("true")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    println!();
    if !usable {
        println!("## Sandbox cost\nskipped: bubblewrap is unusable here");
        return Ok(());
    }
    let mut rows = Vec::new();
    for (label, command) in [("true", "true"), ("50ms", "sh -c 'sleep 0.05'")] {
        let none = batch(dir, "none", label, command, n).await?;
        let bwrap = batch(dir, "bwrap", label, command, n).await?;
        // Each of the PARALLEL slots runs n / PARALLEL items one after the other.
        let per_item = |t: f64| t * f64::from(PARALLEL) / n as f64 * 1000.0;
        rows.push((
            label,
            format!(
                "none {none:.2} s ({:.0}/s, {:.1} ms/item) · bwrap {bwrap:.2} s ({:.0}/s, {:.1} ms/item) · ratio {:.2} · overhead {:.1} ms/item",
                n as f64 / none,
                per_item(none),
                n as f64 / bwrap,
                per_item(bwrap),
                bwrap / none,
                per_item(bwrap) - per_item(none),
            ),
            if label == "true" { "ratio ≤ 2" } else { "" },
        ));
    }
    table(
        "Sandbox cost",
        &format!(
            "{n} validation items per run at parallel = concurrency = {PARALLEL}, `--sandbox none` then `--sandbox bwrap`, one fresh server each; `true`, then `sh -c 'sleep 0.05'` (50 ms of work; the item's path is its $0)"
        ),
        &rows
            .iter()
            .map(|(l, v, t)| (*l, v.clone(), *t))
            .collect::<Vec<_>>(),
    );
    Ok(())
}
