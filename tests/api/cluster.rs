//! Several `batchforge serve` processes on one PostgreSQL database: sharing a batch,
//! cancelling across nodes, failing over after SIGKILL, and keeping long items on live
//! nodes. Skipped, with a printed reason, when no PostgreSQL answers.

use crate::helpers::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// One node: a `batchforge serve` child process.
struct Node {
    child: tokio::process::Child,
    address: String,
}

impl Node {
    async fn start(dir: &Path, url: &str, name: &str, extra: &[&str]) -> Node {
        let workspace = dir.join("ws");
        std::fs::create_dir_all(&workspace).unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--database-url".as_ref(),
            url.as_ref(),
            "--workspace".as_ref(),
            workspace.as_os_str(),
        ];
        for a in [
            "--noop-processor",
            "--webhook-allow-private",
            "--heartbeat-interval",
            "0.5s",
            "--node-timeout",
            "3s",
        ]
        .iter()
        .chain(extra)
        {
            args.push(a.as_ref());
        }
        let (child, address) = spawn_serve(&args, log).await;
        Node { child, address }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, v) = send(
            &client(),
            method,
            &format!("{}{path}", self.address),
            body.as_deref(),
        )
        .await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    async fn items(&self, id: &str) -> Vec<Value> {
        all_items_at(&self.address, id, 1000).await
    }

    async fn wait_status(&self, id: &str, status: &str, limit: Duration) -> Value {
        wait_for(limit, &format!("job {id} {status}"), || async {
            let job = self.call("GET", &format!("/batch/jobs/{id}"), None).await;
            (job["status"] == status).then_some(job)
        })
        .await
    }
}

/// Nodes on a fresh database, or `None` (skipped) without PostgreSQL.
async fn cluster(dir: &Path, n: usize) -> Option<(TestDb, Vec<Node>)> {
    cluster_with(dir, n, &[]).await
}

async fn cluster_with(dir: &Path, n: usize, extra: &[&str]) -> Option<(TestDb, Vec<Node>)> {
    if !postgres_available() {
        return None;
    }
    let db = TestDb::create_postgres(dir, "cluster");
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(Node::start(dir, &db.url, &format!("node{i}"), extra).await);
    }
    Some((db, nodes))
}

fn noop_items(n: usize, sleep_ms: u64) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"key": format!("i{i}"), "sleep_ms": sleep_ms}))
        .collect()
}

/// Which node ran each item, counted per node.
fn shares(items: &[Value]) -> BTreeMap<String, usize> {
    let mut by_node = BTreeMap::new();
    for item in items {
        *by_node
            .entry(item["node"].as_str().unwrap_or("none").to_string())
            .or_default() += 1;
    }
    by_node
}

async fn count_deliveries(url: &str, job_id: &str) -> i64 {
    use diesel::prelude::*;
    let store =
        batchforge::store::Store::open(&batchforge::store::DatabaseUrl::parse(url).unwrap())
            .unwrap();
    let id = job_id.to_string();
    store
        .read(move |conn| {
            #[derive(QueryableByName)]
            struct N {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let row: N =
                diesel::sql_query("SELECT count(*) AS n FROM webhook_deliveries WHERE job_id = $1")
                    .bind::<diesel::sql_types::Text, _>(id)
                    .get_result(conn)?;
            Ok(row.n)
        })
        .await
        .unwrap()
}

#[actix_web::test]
async fn three_nodes_share_a_batch_and_every_item_has_exactly_one_result() {
    let dir = tempfile::tempdir().unwrap();
    let Some((db, nodes)) = cluster(dir.path(), 3).await else {
        return;
    };
    // A callback makes finalization observable: the transaction that builds the job's
    // result also writes its one webhook delivery.
    let job = nodes[0]
        .call(
            "POST",
            "/batch/jobs",
            Some(&json!({
                "type": "noop",
                "items": noop_items(3000, 20),
                "parallel": 16,
                "callback_url": "http://127.0.0.1:9/finished",
            })),
        )
        .await;
    let id = job["job_id"].as_str().unwrap().to_string();
    // Read through another node than the one it was submitted to.
    let done = nodes[1]
        .wait_status(&id, "completed", Duration::from_secs(120))
        .await;
    assert_eq!(done["result"]["summary"]["successful"], 3000, "{done}");
    assert_eq!(done["result"]["results"].as_array().unwrap().len(), 3000);

    let items = nodes[2].items(&id).await;
    assert_eq!(items.len(), 3000);
    let keys: BTreeSet<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 3000, "every item once");
    for item in &items {
        assert_eq!(item["status"], "succeeded", "{item}");
        assert_eq!(item["attempts"], 1, "no item ran twice: {item}");
    }
    let by_node = shares(&items);
    eprintln!("each node's share of 3000 items: {by_node:?}");
    assert_eq!(by_node.len(), 3, "all three nodes took part: {by_node:?}");
    assert!(by_node.values().all(|&n| n > 0), "{by_node:?}");
    assert_eq!(
        count_deliveries(&db.url, &id).await,
        1,
        "the job was finalized exactly once"
    );
}

#[actix_web::test]
async fn cancelling_on_one_node_stops_the_items_running_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_db, nodes)) = cluster(dir.path(), 3).await else {
        return;
    };
    let job = nodes[0]
        .call(
            "POST",
            "/batch/jobs",
            Some(&json!({"type": "noop", "items": noop_items(90, 60_000), "parallel": 5})),
        )
        .await;
    let id = job["job_id"].as_str().unwrap().to_string();
    // Wait until every node runs some of it.
    wait_for(
        Duration::from_secs(30),
        "items running on all three nodes",
        || {
            let nodes = &nodes;
            let id = &id;
            async move {
                let items = nodes[0].items(id).await;
                let running: Vec<Value> = items
                    .into_iter()
                    .filter(|i| i["status"] == "running")
                    .collect();
                (shares(&running).len() == 3).then_some(())
            }
        },
    )
    .await;
    let started = Instant::now();
    nodes[2]
        .call("DELETE", &format!("/batch/jobs/{id}"), None)
        .await;
    nodes[1]
        .wait_status(&id, "cancelled", Duration::from_secs(10))
        .await;
    wait_for(Duration::from_secs(10), "no item left running", || async {
        let items = nodes[0].items(&id).await;
        items
            .iter()
            .all(|i| i["status"] == "cancelled")
            .then_some(())
    })
    .await;
    let took = started.elapsed();
    eprintln!("cancelled on node 2; every node stopped its items within {took:?}");
    let job = wait_for(
        Duration::from_secs(10),
        "the cancelled job's result",
        || async {
            let job = nodes[0]
                .call("GET", &format!("/batch/jobs/{id}"), None)
                .await;
            job["result"].is_object().then_some(job)
        },
    )
    .await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["result"]["summary"]["cancelled"], 90, "{job}");
}

#[actix_web::test]
async fn after_sigkill_of_one_node_the_others_rescue_its_items_and_finish_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_db, mut nodes)) = cluster(dir.path(), 3).await else {
        return;
    };
    let n = 600;
    let job = nodes[0]
        .call(
            "POST",
            "/batch/jobs",
            Some(&json!({"type": "noop", "items": noop_items(n, 100), "parallel": 8})),
        )
        .await;
    let id = job["job_id"].as_str().unwrap().to_string();
    // The victim is node 2; wait until it holds items.
    let victim_name = wait_for(Duration::from_secs(30), "node 2 runs items", || {
        let nodes = &nodes;
        let id = &id;
        async move {
            let items = nodes[2].items(id).await;
            let mine = nodes[2].call("GET", "/health", None).await;
            let name = mine["node_id"].as_str()?.to_string();
            items
                .iter()
                .any(|i| i["status"] == "running" && i["node"] == name.as_str())
                .then_some(name)
        }
    })
    .await;
    // Freeze it first, so the items it holds can be read while they stay its own, then
    // kill it: those are its in-flight items.
    let pid = nodes[2].child.id().unwrap() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let in_flight: BTreeSet<String> = nodes[0]
        .items(&id)
        .await
        .iter()
        .filter(|i| i["status"] == "running" && i["node"] == victim_name.as_str())
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    let mut victim = nodes.pop().unwrap();
    victim.child.start_kill().unwrap();
    victim.child.wait().await.unwrap();
    let killed = Instant::now();
    assert!(!in_flight.is_empty());

    let job = nodes[0]
        .wait_status(&id, "completed", Duration::from_secs(120))
        .await;
    eprintln!(
        "killed node {victim_name} with {} items in flight; the batch completed {:?} later",
        in_flight.len(),
        killed.elapsed()
    );
    assert_eq!(
        job["result"]["summary"]["successful"], n,
        "nothing lost: {job}"
    );
    let items = nodes[1].items(&id).await;
    assert_eq!(items.len(), n);
    let ran_twice: BTreeSet<String> = items
        .iter()
        .filter(|i| i["attempts"].as_u64() > Some(1))
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    eprintln!("items run twice: {}", ran_twice.len());
    assert!(
        ran_twice.is_subset(&in_flight),
        "only the killed node's in-flight items ran again: {ran_twice:?} vs {in_flight:?}"
    );
    assert_eq!(ran_twice, in_flight, "every rescued item ran again, once");
    for item in &items {
        assert_eq!(item["status"], "succeeded", "{item}");
        assert_ne!(item["node"], victim_name.as_str(), "{item}");
    }
}

#[actix_web::test]
async fn an_item_longer_than_the_node_timeout_is_not_rescued_while_its_node_lives() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_db, nodes)) = cluster(dir.path(), 2).await else {
        return;
    };
    // Each item runs 5 s; a node is declared dead after 3 s without a heartbeat.
    let job = nodes[0]
        .call(
            "POST",
            "/batch/jobs",
            Some(&json!({"type": "noop", "items": noop_items(4, 5_000), "parallel": 4})),
        )
        .await;
    let id = job["job_id"].as_str().unwrap().to_string();
    nodes[1]
        .wait_status(&id, "completed", Duration::from_secs(60))
        .await;
    for item in nodes[1].items(&id).await {
        assert_eq!(item["attempts"], 1, "a long item ran twice: {item}");
    }
}

/// Submits `n` gpu-group items of `sleep_ms` each to `node` and returns the job id.
async fn submit_gpu_job(node: &Node, n: usize, sleep_ms: u64) -> String {
    let job = node
        .call(
            "POST",
            "/batch/jobs",
            Some(&json!({
                "type": "noop",
                "items": noop_items(n, sleep_ms),
                "parallel": 4,
                "concurrency_group": "gpu",
            })),
        )
        .await;
    job["job_id"].as_str().unwrap().to_string()
}

/// The most items that ran at once: each reports when its work began and lasted
/// `sleep_ms`.
fn most_at_once(items: &[Value], sleep_ms: u64) -> i32 {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for item in items {
        let start = item["result"]["started_at"].as_f64().expect("started_at");
        edges.push((start, 1));
        edges.push((start + sleep_ms as f64 / 1000.0, -1));
    }
    // Ends sort before starts at the same instant.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut running, mut most) = (0, 0);
    for (_, step) in edges {
        running += step;
        most = most.max(running);
    }
    most
}

#[actix_web::test]
async fn a_concurrency_group_limit_holds_across_all_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_db, nodes)) = cluster_with(dir.path(), 3, &["--concurrency-group", "gpu=2"]).await
    else {
        return;
    };
    let sleep = 300;
    let id = submit_gpu_job(&nodes[0], 24, sleep).await;
    nodes[1]
        .wait_status(&id, "completed", Duration::from_secs(60))
        .await;
    // At no instant may more than two overlap, whichever nodes ran them.
    let items = nodes[2].items(&id).await;
    let most = most_at_once(&items, sleep);
    eprintln!(
        "most gpu items at once over 3 nodes: {most}; shares {:?}",
        shares(&items)
    );
    assert!(
        most <= 2,
        "the group limit of 2 was exceeded: {most} at once"
    );
    assert_eq!(most, 2, "the limit is used, not undershot");
}

#[actix_web::test]
async fn a_node_declared_dead_while_frozen_gives_up_its_group_slot() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_db, nodes)) = cluster_with(dir.path(), 2, &["--concurrency-group", "gpu=1"]).await
    else {
        return;
    };
    let sleep = 300;
    let id = submit_gpu_job(&nodes[0], 30, sleep).await;
    // Freeze the node running a gpu item past the node timeout (3 s): the other rescues
    // its claims and its slot, and takes the slot over.
    let frozen = wait_for(Duration::from_secs(30), "a node runs a gpu item", || {
        let nodes = &nodes;
        let id = &id;
        async move {
            let items = nodes[0].items(id).await;
            let node = items.iter().find(|i| i["status"] == "running")?["node"]
                .as_str()?
                .to_string();
            for (n, candidate) in nodes.iter().enumerate() {
                let health = candidate.call("GET", "/health", None).await;
                if health["node_id"] == node.as_str() {
                    return Some(n);
                }
            }
            None
        }
    })
    .await;
    let pid = nodes[frozen].child.id().unwrap() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let other = 1 - frozen;
    nodes[other]
        .wait_status(&id, "completed", Duration::from_secs(60))
        .await;
    let items = nodes[other].items(&id).await;
    let most = most_at_once(&items, sleep);
    eprintln!(
        "most gpu items at once around the freeze: {most}; shares {:?}",
        shares(&items)
    );
    assert_eq!(
        most, 1,
        "the group limit of 1 held while a node was frozen and came back"
    );
}
