//! The Model Context Protocol side of batchforge: its own sandboxed filesystem server
//! ([`server`], `batchforge mcp-server`), the client sessions the `batch_mcp` processor
//! keeps per configured server ([`pool`]), and the operations a batch may hold ([`ops`]).
//!
//! Which servers exist is fixed when the engine starts ([`McpConfig`]): the built-in
//! `batchforge` server (this binary's `mcp-server` over stdio on the workspace root) plus
//! any stdio or streamable-HTTP servers the configuration names. A job picks one by name
//! with its `server` option.

pub mod args;
pub mod ops;
pub mod pool;
pub mod server;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the built-in server: `batchforge mcp-server --root <workspace>
/// --command-timeout 86400` over stdio. Its command timeout is the longest a job may
/// ask for, so the job's `timeout_seconds` (default 300) is what limits each call: when
/// it runs out the call is cancelled and the server kills the command's process group.
pub const BUILTIN_SERVER: &str = "batchforge";

/// Longest per-operation timeout a `batch_mcp` job may ask for (a day). The built-in
/// server runs with this as its `--command-timeout`, so a job's own timeout is what
/// limits its commands there.
pub const MAX_TIMEOUT_SECONDS: f64 = 86_400.0;

/// MCP settings of an engine; see the README's configuration table for their flags.
#[derive(Debug, Clone, Default)]
pub struct McpConfig {
    /// Servers besides the built-in one. One named `batchforge` replaces the built-in.
    pub servers: Vec<McpServerConfig>,
    /// The server a job uses when it names none (default: `batchforge`).
    pub default_server: Option<String>,
    /// The `batchforge` binary that runs the built-in server. `None` looks for it: the
    /// running executable if it is `batchforge`, else a `batchforge` beside it or one
    /// directory up (where cargo puts it for tests and examples), else on `PATH`.
    pub server_binary: Option<PathBuf>,
    /// Start the built-in server with `--read-only` (no `write_file`, no `run_command`).
    pub read_only: bool,
    /// Arguments that put the built-in server's `run_command` in the engine's sandbox
    /// (set by the engine from [`crate::sandbox::Sandbox::server_args`]).
    pub sandbox_args: Vec<String>,
}

/// One MCP server a job may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    /// What jobs call it in their `server` option.
    pub name: String,
    /// How to reach it.
    pub transport: McpTransport,
}

/// How batchforge talks to a server. Its `Debug` shows environment and header values as
/// `***`: they are where a server's credentials live.
#[derive(Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// A child process speaking MCP on its stdin/stdout; its stderr goes to the log.
    Stdio {
        /// Program, found on `PATH` unless it holds a slash.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables.
        env: BTreeMap<String, String>,
        /// Working directory (default: the engine's).
        cwd: Option<PathBuf>,
    },
    /// A streamable-HTTP endpoint, e.g. `http://127.0.0.1:9000/mcp`.
    Http {
        /// The endpoint URL.
        url: String,
        /// Headers sent with every request (`Authorization: Bearer …`), from the
        /// configuration file's `headers`; a job's `headers` option adds to them.
        headers: BTreeMap<String, String>,
    },
}

impl std::fmt::Debug for McpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked = |m: &BTreeMap<String, String>| -> BTreeMap<String, &'static str> {
            m.keys()
                .map(|k| (k.clone(), crate::secrets::MASK))
                .collect()
        };
        match self {
            McpTransport::Stdio {
                command,
                args,
                env,
                cwd,
            } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", &masked(env))
                .field("cwd", cwd)
                .finish(),
            McpTransport::Http { url, headers } => f
                .debug_struct("Http")
                .field("url", &crate::secrets::mask_url(url))
                .field("headers", &masked(headers))
                .finish(),
        }
    }
}

/// Headers that a configuration or a job may not set: the MCP transport's own, and those
/// HTTP itself manages.
const RESERVED_HEADERS: [&str; 8] = [
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
];

/// `headers` as HTTP headers; the error names the header that is invalid or reserved
/// (never its value, which may be a secret).
pub fn header_map(
    headers: &BTreeMap<String, String>,
) -> Result<
    std::collections::HashMap<reqwest::header::HeaderName, reqwest::header::HeaderValue>,
    String,
> {
    let mut map = std::collections::HashMap::new();
    for (name, value) in headers {
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "header '{name}' is set by the MCP transport itself and cannot be given"
            ));
        }
        let n = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("'{name}' is not a valid HTTP header name"))?;
        let mut v = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header '{name}' is not a valid header value"))?;
        v.set_sensitive(true);
        map.insert(n, v);
    }
    Ok(map)
}

impl McpTransport {
    /// A one-line description for messages and logs.
    pub fn describe(&self) -> String {
        match self {
            McpTransport::Stdio { command, args, .. } => {
                let mut words = vec![command.clone()];
                words.extend(args.iter().cloned());
                shell_words::join(words)
            }
            McpTransport::Http { url, .. } => crate::secrets::mask_url(url).into_owned(),
        }
    }
}

/// The servers of a started engine, checked, with the built-in one resolved.
#[derive(Debug, Clone)]
pub struct McpRegistry {
    /// Every server, the built-in one included.
    pub servers: Vec<McpServerConfig>,
    /// The server a job gets when it names none.
    pub default_server: String,
}

impl McpRegistry {
    /// Checks `config` and adds the built-in server for `workspace` (already canonical).
    pub fn resolve(config: &McpConfig, workspace: &Path) -> Result<McpRegistry, String> {
        let mut servers: Vec<McpServerConfig> = Vec::new();
        for s in &config.servers {
            check_server(s)?;
            if servers.iter().any(|t| t.name == s.name) {
                return Err(format!("MCP server '{}' is configured twice", s.name));
            }
            servers.push(s.clone());
        }
        if !servers.iter().any(|s| s.name == BUILTIN_SERVER) {
            let binary = match &config.server_binary {
                Some(b) => b.clone(),
                // Not finding it is not fatal: jobs on this server fail with the reason.
                None => find_batchforge_binary().unwrap_or_else(|| PathBuf::from("batchforge")),
            };
            let mut args = vec![
                "mcp-server".to_string(),
                "--root".to_string(),
                workspace.to_string_lossy().into_owned(),
                // The job's own timeout governs (see BUILTIN_SERVER).
                "--command-timeout".to_string(),
                MAX_TIMEOUT_SECONDS.to_string(),
            ];
            if config.read_only {
                args.push("--read-only".into());
            }
            args.extend(config.sandbox_args.iter().cloned());
            servers.insert(
                0,
                McpServerConfig {
                    name: BUILTIN_SERVER.into(),
                    transport: McpTransport::Stdio {
                        command: binary.to_string_lossy().into_owned(),
                        args,
                        env: BTreeMap::new(),
                        cwd: Some(workspace.to_path_buf()),
                    },
                },
            );
        }
        let default_server = config
            .default_server
            .clone()
            .unwrap_or_else(|| BUILTIN_SERVER.to_string());
        if !servers.iter().any(|s| s.name == default_server) {
            return Err(format!(
                "the default MCP server '{default_server}' is not configured (configured: {})",
                names(&servers)
            ));
        }
        for s in &servers {
            if let McpTransport::Stdio { command, cwd, .. } = &s.transport {
                let dir = cwd.clone().unwrap_or_else(|| PathBuf::from("."));
                if crate::sandbox::spawn::find_program(command, &dir).is_none() {
                    log::warn!(
                        "MCP server '{}': program '{command}' was not found; its operations will fail",
                        s.name
                    );
                }
            }
        }
        Ok(McpRegistry {
            servers,
            default_server,
        })
    }

    /// The configured names, comma separated, for messages.
    pub fn names(&self) -> String {
        names(&self.servers)
    }
}

fn names(servers: &[McpServerConfig]) -> String {
    servers
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_server(s: &McpServerConfig) -> Result<(), String> {
    let ok_name = !s.name.is_empty()
        && s.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok_name {
        return Err(format!(
            "MCP server name '{}' must be non-empty letters, digits, '-', '_' or '.'",
            s.name
        ));
    }
    match &s.transport {
        McpTransport::Stdio { command, .. } if command.trim().is_empty() => Err(format!(
            "MCP server '{}': the command must not be empty",
            s.name
        )),
        McpTransport::Http { url, .. }
            if !(url.starts_with("http://") || url.starts_with("https://")) =>
        {
            Err(format!(
                "MCP server '{}': url '{}' must start with http:// or https://",
                s.name,
                crate::secrets::mask_url(url)
            ))
        }
        McpTransport::Http { headers, .. } => header_map(headers)
            .map(|_| ())
            .map_err(|e| format!("MCP server '{}': {e}", s.name)),
        _ => Ok(()),
    }
}

/// Where the `batchforge` binary is, when this process may not be it (tests, examples).
fn find_batchforge_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if exe.file_name().is_some_and(|n| n == "batchforge") {
        return Some(exe);
    }
    let dir = exe.parent()?;
    [dir.join("batchforge"), dir.parent()?.join("batchforge")]
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| crate::sandbox::spawn::find_program("batchforge", dir))
}

/// Parses `--mcp-server NAME=COMMAND ARGS…` or `NAME=http(s)://URL`.
pub fn parse_server_flag(s: &str) -> Result<McpServerConfig, String> {
    let (name, spec) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': expected NAME=COMMAND [ARGS…] or NAME=URL"))?;
    let (name, spec) = (name.trim(), spec.trim());
    let transport = if spec.starts_with("http://") || spec.starts_with("https://") {
        McpTransport::Http {
            url: spec.into(),
            headers: BTreeMap::new(),
        }
    } else {
        let mut argv = crate::sandbox::spawn::split_command(spec)
            .map_err(|e| format!("'{s}': the command {e}"))?;
        let command = argv.remove(0);
        McpTransport::Stdio {
            command,
            args: argv,
            env: BTreeMap::new(),
            cwd: None,
        }
    };
    let server = McpServerConfig {
        name: name.into(),
        transport,
    };
    check_server(&server)?;
    Ok(server)
}

/// One entry of a configuration file, in the `mcpServers` form MCP clients share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    #[serde(rename = "type")]
    kind: Option<String>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(rename = "mcpServers")]
    mcp_servers: BTreeMap<String, FileEntry>,
    #[serde(rename = "defaultServer")]
    default_server: Option<String>,
}

/// Parses a configuration file's text:
/// `{"mcpServers": {"fs": {"command": "node", "args": […], "env": {…}},
/// "remote": {"url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer …"}}},
/// "defaultServer": "fs"}`.
/// Returns the servers and the default server, if the file names one.
pub fn parse_config_file(text: &str) -> Result<(Vec<McpServerConfig>, Option<String>), String> {
    let file: FileConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut servers = Vec::new();
    for (name, e) in file.mcp_servers {
        let transport = match (e.kind.as_deref(), e.command, e.url) {
            (None | Some("stdio"), Some(_), None) if !e.headers.is_empty() => {
                return Err(format!(
                    "mcpServers.{name}.headers: headers are for \"url\" (streamable HTTP) servers; a stdio server takes \"env\""
                ))
            }
            (None | Some("stdio"), Some(command), None) => McpTransport::Stdio {
                command,
                args: e.args,
                env: e.env,
                cwd: e.cwd,
            },
            (None | Some("http" | "streamable-http" | "streamableHttp"), None, Some(url)) => {
                McpTransport::Http {
                    url,
                    headers: e.headers,
                }
            }
            (Some(kind), _, _)
                if !matches!(
                    kind,
                    "stdio" | "http" | "streamable-http" | "streamableHttp"
                ) =>
            {
                return Err(format!(
                    "mcpServers.{name}.type: '{kind}' is not supported (stdio or http)"
                ))
            }
            _ => {
                return Err(format!(
                "mcpServers.{name}: give either \"command\" (stdio) or \"url\" (streamable HTTP)"
            ))
            }
        };
        let server = McpServerConfig { name, transport };
        check_server(&server)?;
        servers.push(server);
    }
    Ok((servers, file.default_server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_flags_take_a_command_or_a_url() {
        let s = parse_server_flag("fs=node 'dir with space/index.js' /ws").unwrap();
        assert_eq!(s.name, "fs");
        assert_eq!(
            s.transport,
            McpTransport::Stdio {
                command: "node".into(),
                args: vec!["dir with space/index.js".into(), "/ws".into()],
                env: BTreeMap::new(),
                cwd: None
            }
        );
        let s = parse_server_flag("remote=http://127.0.0.1:9000/mcp").unwrap();
        assert_eq!(
            s.transport,
            McpTransport::Http {
                url: "http://127.0.0.1:9000/mcp".into(),
                headers: BTreeMap::new(),
            }
        );
        assert!(parse_server_flag("no-equals-sign").is_err());
        assert!(parse_server_flag("bad name=node").is_err());
        assert!(parse_server_flag("empty=").is_err());
    }

    #[test]
    fn config_files_use_the_mcp_servers_form() {
        let (servers, default) = parse_config_file(
            r#"{"mcpServers": {
                "fs": {"command": "node", "args": ["a.js"], "env": {"K": "V"}},
                "web": {"type": "http", "url": "https://example.invalid/mcp",
                        "headers": {"Authorization": "Bearer web-secret-1"}}
            }, "defaultServer": "fs"}"#,
        )
        .unwrap();
        let shown = format!("{servers:?}");
        assert!(
            !shown.contains("web-secret-1") && !shown.contains("\"V\"") && shown.contains("***"),
            "{shown}"
        );
        assert_eq!(default.as_deref(), Some("fs"));
        assert_eq!(servers.len(), 2);
        assert!(
            matches!(&servers[0].transport, McpTransport::Stdio { env, .. } if env["K"] == "V")
        );
        assert!(matches!(&servers[1].transport, McpTransport::Http { .. }));
        let err = parse_config_file(r#"{"mcpServers": {"x": {"args": []}}}"#).unwrap_err();
        assert!(err.contains("mcpServers.x"), "{err}");
        let err = parse_config_file(r#"{"mcpServers": {"x": {"command": "a", "bogus": 1}}}"#)
            .unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        for (entry, says) in [
            (
                r#"{"url": "http://x/mcp", "headers": {"Accept": "a"}}"#,
                "'Accept'",
            ),
            (
                r#"{"url": "http://x/mcp", "headers": {"bad name": "a"}}"#,
                "'bad name'",
            ),
            (
                r#"{"url": "http://x/mcp", "headers": {"X": "line\nbreak"}}"#,
                "header 'X'",
            ),
            (
                r#"{"command": "a", "headers": {"X": "y"}}"#,
                "mcpServers.x.headers",
            ),
        ] {
            let err =
                parse_config_file(&format!(r#"{{"mcpServers": {{"x": {entry}}}}}"#)).unwrap_err();
            assert!(
                err.contains(says) && !err.contains("break"),
                "{entry}: {err}"
            );
        }
    }

    #[test]
    fn the_registry_adds_the_built_in_server_and_checks_the_default() {
        let ws = Path::new("/tmp");
        let r = McpRegistry::resolve(&McpConfig::default(), ws).unwrap();
        assert_eq!(r.default_server, BUILTIN_SERVER);
        match &r.servers[0].transport {
            McpTransport::Stdio { args, .. } => assert_eq!(
                args,
                &["mcp-server", "--root", "/tmp", "--command-timeout", "86400"]
            ),
            other => panic!("{other:?}"),
        }
        let bad = McpConfig {
            default_server: Some("nope".into()),
            ..Default::default()
        };
        assert!(McpRegistry::resolve(&bad, ws).unwrap_err().contains("nope"));
        let twice = McpConfig {
            servers: vec![
                parse_server_flag("a=true").unwrap(),
                parse_server_flag("a=false").unwrap(),
            ],
            ..Default::default()
        };
        assert!(McpRegistry::resolve(&twice, ws)
            .unwrap_err()
            .contains("twice"));
    }
}
