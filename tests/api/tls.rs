//! HTTPS: `serve --tls-cert/--tls-key` with a CA and a server certificate made here, driven
//! by the CLI with `--ca-cert`; an untrusted certificate, plain HTTP to the TLS port and bad
//! certificate files are refused.

use crate::helpers::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

/// A CA and a server certificate for `localhost` and `127.0.0.1` signed by it, as PEM
/// files in `dir`: (ca.pem, server.pem, server.key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "batchforge test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, server_cert.pem()).unwrap();
    std::fs::write(&paths.2, server_key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

async fn cli(address: &str, ca: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"));
    cmd.env_remove("BATCHFORGE_CA_CERT")
        .args(["--server", address])
        .args(args);
    if let Some(ca) = ca {
        cmd.arg("--ca-cert").arg(ca);
    }
    cmd.output().await.expect("the CLI runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `batchforge serve` child over HTTPS with a fresh database and `workspace`.
async fn spawn_https(dir: &Path, workspace: &Path) -> (tokio::process::Child, String, PathBuf) {
    let (ca, cert, key) = make_certificates(dir);
    let db_arg = format!("sqlite://{}", dir.join("tls.db").display());
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let (child, address) = spawn_serve(
        &[
            "--database-url".as_ref(),
            db_arg.as_ref(),
            "--workspace".as_ref(),
            workspace.as_os_str(),
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
        log,
    )
    .await;
    (child, address, ca)
}

#[actix_web::test]
async fn the_cli_drives_an_https_server_trusting_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("a.txt"), "x").unwrap();
    let (_child, address, ca) = spawn_https(dir.path(), &workspace).await;
    assert!(address.starts_with("https://127.0.0.1:"), "{address}");

    let out = cli(
        &address,
        Some(&ca),
        &[
            "submit",
            "validation",
            "--command",
            "test -s",
            "a.txt",
            "--wait",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = cli(&address, Some(&ca), &["--json", "jobs"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["total"], 1, "{page}");
    let id = page["jobs"][0]["job_id"].as_str().unwrap().to_string();
    let out = cli(&address, Some(&ca), &["--json", "show", &id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["status"], "completed", "{job}");
    let out = cli(&address, Some(&ca), &["--json", "items", &id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(items["items"][0]["status"], "succeeded", "{items}");

    // The system's roots do not know the test CA: a clear certificate error, exit 2.
    let out = cli(&address, None, &["jobs"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("certificate") && stderr.contains("--ca-cert"),
        "{stderr}"
    );
}

#[actix_web::test]
async fn plain_http_to_the_tls_port_runs_nothing_and_an_http_origin_is_foreign() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    std::fs::create_dir_all(&workspace).unwrap();
    let (_child, address, ca) = spawn_https(dir.path(), &workspace).await;
    let port = address.rsplit(':').next().unwrap().to_string();
    let marker = workspace.join("pwned");

    let body = r#"{"targets":[{"id":"x","path":"."}],"check_command":"touch pwned"}"#;
    let request = format!(
        "POST /batch/validation HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        !text(&answer).starts_with("HTTP/1.1 2"),
        "plain HTTP was served: {}",
        text(&answer)
    );

    // Over HTTPS: a page of the http:// origin of the same host and port is not the
    // server's own (the server speaks only https), the https:// one is.
    let tls = rustls::ClientConfig::builder_with_provider(batchforge::api::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            for c in batchforge::api::tls::read_certs(&ca, "ca").unwrap() {
                roots.add(c).unwrap();
            }
            roots
        })
        .with_no_client_auth();
    let client = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::new(tls)))
        .finish();
    let url = format!("{address}/batch/validation");
    let resp = client
        .post(&url)
        .insert_header(("origin", format!("http://127.0.0.1:{port}")))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let mut resp = client
        .get(format!("{address}/batch/jobs"))
        .insert_header(("origin", format!("https://127.0.0.1:{port}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let page: serde_json::Value = resp.json().await.unwrap();
    // Neither the plain-HTTP request nor the foreign-origin one created a job or ran the command.
    assert_eq!(page["total"], 0, "{page}");
    assert!(!marker.exists(), "the command ran");
}

/// `serve` with `args`, expected to refuse to start: its exit code and stderr.
async fn serve_refusing(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let db_arg = format!("sqlite://{}", dir.path().join("x.db").display());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"))
            .env_remove("BATCHFORGE_TLS_CERT")
            .env_remove("BATCHFORGE_TLS_KEY")
            .args(["serve", "--bind", "127.0.0.1:0", "--database-url", &db_arg])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("serve refuses at once")
    .unwrap();
    (out.status.code(), text(&out.stderr))
}

#[actix_web::test]
async fn serve_refuses_missing_or_invalid_certificate_files_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = make_certificates(dir.path());
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();

    let (code, stderr) = serve_refusing(&["--tls-cert".as_ref(), cert.as_os_str()]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-cert needs --tls-key"), "{stderr}");

    let (code, stderr) = serve_refusing(&[
        "--tls-cert".as_ref(),
        missing.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ])
    .await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains(&*missing.to_string_lossy()), "{stderr}");

    let (code, stderr) = serve_refusing(&[
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        garbage.as_os_str(),
    ])
    .await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&*garbage.to_string_lossy()) && stderr.contains("private key"),
        "{stderr}"
    );

    // The key of another certificate does not fit.
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_key) = make_certificates(other.path());
    let (code, stderr) = serve_refusing(&[
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        other_key.as_os_str(),
    ])
    .await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

/// A row of `pg_stat_ssl` for the asking connection.
#[derive(diesel::QueryableByName)]
struct SslRow {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    ssl: bool,
}

#[actix_web::test]
async fn the_engine_reaches_postgres_over_tls_with_sslmode_require() {
    if !on_postgres() {
        // TLS to PostgreSQL needs the server under test (BATCHFORGE_TEST_DATABASE=postgres).
        return;
    }
    use diesel::{Connection, RunQueryDsl};
    let dir = tempfile::tempdir().unwrap();
    let _db = TestDb::create(dir.path(), "tls.db");
    let url = format!("{}?sslmode=require", database_url(dir.path(), "tls.db"));
    // The libpq this build links speaks TLS: the server says this very connection is.
    let mut conn = diesel::PgConnection::establish(&url).expect("connects with sslmode=require");
    let rows: Vec<SslRow> =
        diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .load(&mut conn)
            .unwrap();
    assert!(rows.len() == 1 && rows[0].ssl, "the connection is not TLS");
    // And a served engine on that URL runs a job.
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let (_child, address) = spawn_serve(
        &[
            "--database-url".as_ref(),
            url.as_ref(),
            "--workspace".as_ref(),
            dir.path().as_os_str(),
        ],
        log,
    )
    .await;
    std::fs::write(dir.path().join("a.txt"), "a").unwrap();
    let body =
        serde_json::json!({"targets": [{"id": "a", "path": "a.txt"}], "check_command": "true"})
            .to_string();
    let (status, job) = send(
        &client(),
        "POST",
        &format!("{address}/batch/validation"),
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(status, awc::http::StatusCode::OK, "{job}");
    let id = job["job_id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(30), "the job over TLS", || async {
        let (_, job) = send(
            &client(),
            "GET",
            &format!("{address}/batch/jobs/{id}"),
            None,
        )
        .await;
        (job["status"] == "completed").then_some(())
    })
    .await;
}
