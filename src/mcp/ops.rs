//! The operations a `batch_mcp` job holds, and how each maps onto the tools a server
//! actually lists. Pure logic: parsing is shared by the submit check and the processor.

use crate::processor::FieldError;
use serde_json::{Map, Value};

/// Operation types, as submitted in `type`.
pub const OPERATION_TYPES: [&str; 5] = ["read", "write", "list", "command", "call"];

/// Most bytes a `write` operation's `content` may hold (8 MiB); batchforge's own server
/// refuses bigger content too.
pub const MAX_WRITE_BYTES: usize = 8 * 1024 * 1024;

/// Most bytes one MCP message batchforge sends (a call's JSON-encoded arguments) or its
/// own server answers (a JSON-encoded tool result) may take: 15 MiB. rmcp's stdio
/// transport silently drops a line over 16 MiB (`DEFAULT_MAX_LINE_LENGTH`), which would
/// leave the call waiting for its timeout; the last MiB is room for the envelope.
/// JSON escaping inflates text (a control character takes 6 bytes), so the encoded size
/// is what counts.
pub const MAX_MESSAGE_BYTES: usize = 15 * 1024 * 1024;

/// The length of `v` encoded as compact JSON, without building the text.
pub fn encoded_len<T: serde::Serialize + ?Sized>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing into a counter cannot fail, and serializing JSON values does not either.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

/// One parsed operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Read a text file.
    Read {
        /// Path on the server.
        path: String,
    },
    /// Write a text file.
    Write {
        /// Path on the server.
        path: String,
        /// The whole new content.
        content: String,
    },
    /// List a directory.
    List {
        /// Path on the server.
        path: String,
    },
    /// Run a command (batchforge's own server: no shell, in the sandbox root).
    Command {
        /// The command line, split into argv by the server.
        command: String,
        /// Working directory inside the root, if not the root.
        cwd: Option<String>,
    },
    /// Call any tool the server lists.
    Call {
        /// The tool's name.
        tool: String,
        /// Its arguments.
        arguments: Map<String, Value>,
    },
}

/// Tools that serve an operation type, in order of preference. The official filesystem
/// server names them `read_text_file` (older: `read_file`), `write_file`,
/// `list_directory`; batchforge's own server `read_file`, `write_file`, `list_files`,
/// `run_command`.
pub fn tool_candidates(op_type: &str) -> &'static [&'static str] {
    match op_type {
        "read" => &["read_text_file", "read_file"],
        "write" => &["write_file"],
        "list" => &["list_files", "list_directory"],
        "command" => &["run_command"],
        _ => &[],
    }
}

impl Operation {
    /// Parses one submitted operation. A problem names its field relative to the
    /// operation (`path`, `arguments`), for the caller to prefix with `operations[i].`.
    pub fn parse(v: &Value) -> Result<Operation, FieldError> {
        let Value::Object(o) = v else {
            return Err(FieldError::new("", "must be an object"));
        };
        let op_type = match o.get("type") {
            Some(Value::String(s)) => s.as_str(),
            None | Some(Value::Null) => return Err(FieldError::new("type", "is required")),
            Some(other) => {
                return Err(FieldError::new(
                    "type",
                    format!("must be a string, got {other}"),
                ))
            }
        };
        let op = match op_type {
            "read" => Operation::Read {
                path: required_str(o, "path", false)?,
            },
            "write" => Operation::Write {
                path: required_str(o, "path", false)?,
                // An empty file is a legitimate thing to write.
                content: required_str(o, "content", true)?,
            },
            "list" => Operation::List {
                path: required_str(o, "path", false)?,
            },
            "command" => Operation::Command {
                command: required_str(o, "command", false)?,
                cwd: optional_str(o, "cwd")?,
            },
            "call" => Operation::Call {
                tool: required_str(o, "tool", false)?,
                arguments: match o.get("arguments") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(a)) => a.clone(),
                    Some(other) => {
                        return Err(FieldError::new(
                            "arguments",
                            format!("must be an object of the tool's arguments, got {other}"),
                        ))
                    }
                },
            },
            other => {
                return Err(FieldError::new(
                    "type",
                    format!(
                        "unknown operation '{other}' (expected one of {})",
                        OPERATION_TYPES.join(", ")
                    ),
                ))
            }
        };
        op.check_size()?;
        Ok(op)
    }

    /// Refuses an operation too big to send: a `write` over [`MAX_WRITE_BYTES`], or any
    /// call whose arguments exceed [`MAX_MESSAGE_BYTES`] once JSON-encoded. The error
    /// names the biggest field.
    fn check_size(&self) -> Result<(), FieldError> {
        let mib = |n: usize| n as f64 / (1024.0 * 1024.0);
        if let Operation::Write { content, .. } = self {
            if content.len() > MAX_WRITE_BYTES {
                return Err(FieldError::new(
                    "content",
                    format!(
                        "is {} bytes ({:.1} MiB); a write may hold at most {MAX_WRITE_BYTES} bytes ({:.0} MiB)",
                        content.len(),
                        mib(content.len()),
                        mib(MAX_WRITE_BYTES)
                    ),
                ));
            }
        }
        let arguments = self.arguments();
        let total = encoded_len(&arguments);
        if total <= MAX_MESSAGE_BYTES {
            return Ok(());
        }
        let field = match self {
            Operation::Call { .. } => "arguments".to_string(),
            // The arguments carry the operation's own fields under the same names.
            _ => arguments
                .iter()
                .max_by_key(|(_, v)| encoded_len(v))
                .map(|(k, _)| k.clone())
                .unwrap_or_default(),
        };
        Err(FieldError::new(
            field,
            format!(
                "makes a tool call of {total} bytes ({:.1} MiB) once JSON-encoded (escaping \
                 makes text grow: a control character takes 6 bytes); one MCP message may \
                 take at most {MAX_MESSAGE_BYTES} bytes ({:.0} MiB)",
                mib(total),
                mib(MAX_MESSAGE_BYTES)
            ),
        ))
    }

    /// The arguments of the tool call, whichever tool serves the operation.
    fn arguments(&self) -> Map<String, Value> {
        let mut args = Map::new();
        match self {
            Operation::Call { arguments, .. } => return arguments.clone(),
            Operation::Read { path } | Operation::List { path } => {
                args.insert("path".into(), Value::String(path.clone()));
            }
            Operation::Write { path, content } => {
                args.insert("path".into(), Value::String(path.clone()));
                args.insert("content".into(), Value::String(content.clone()));
            }
            Operation::Command { command, cwd } => {
                args.insert("command".into(), Value::String(command.clone()));
                if let Some(cwd) = cwd {
                    args.insert("cwd".into(), Value::String(cwd.clone()));
                }
            }
        }
        args
    }

    /// The submitted `type`.
    pub fn op_type(&self) -> &'static str {
        match self {
            Operation::Read { .. } => "read",
            Operation::Write { .. } => "write",
            Operation::List { .. } => "list",
            Operation::Command { .. } => "command",
            Operation::Call { .. } => "call",
        }
    }

    /// A short note for live progress (`read src/a.py`).
    pub fn describe(&self) -> String {
        match self {
            Operation::Read { path } | Operation::Write { path, .. } | Operation::List { path } => {
                format!("{} {path}", self.op_type())
            }
            Operation::Command { command, .. } => format!("command {command}"),
            Operation::Call { tool, .. } => format!("call {tool}"),
        }
    }

    /// The tool to call among those the server lists, with its arguments; an error that
    /// says what the server lacks otherwise.
    pub fn to_call(
        &self,
        server: &str,
        offered: &[String],
    ) -> Result<(String, Map<String, Value>), String> {
        if let Operation::Call { tool, arguments } = self {
            if !offered.iter().any(|t| t == tool) {
                return Err(format!(
                    "MCP server '{server}' has no tool '{tool}' (it offers: {})",
                    offered_list(offered)
                ));
            }
            return Ok((tool.clone(), arguments.clone()));
        }
        let args = self.arguments();
        let candidates = tool_candidates(self.op_type());
        match candidates
            .iter()
            .find(|c| offered.iter().any(|t| t == *c))
        {
            Some(tool) => Ok((tool.to_string(), args)),
            None => Err(format!(
                "MCP server '{server}' cannot do '{}' operations: it offers no {} tool (it offers: {})",
                self.op_type(),
                candidates.join(" or "),
                offered_list(offered)
            )),
        }
    }
}

fn offered_list(offered: &[String]) -> String {
    if offered.is_empty() {
        "no tools".into()
    } else {
        offered.join(", ")
    }
}

fn required_str(o: &Map<String, Value>, field: &str, empty_ok: bool) -> Result<String, FieldError> {
    match o.get(field) {
        Some(Value::String(s)) if empty_ok || !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(FieldError::new(field, "must not be empty")),
        None | Some(Value::Null) => Err(FieldError::new(
            field,
            format!(
                "is required for '{}' operations",
                o.get("type").and_then(Value::as_str).unwrap_or_default()
            ),
        )),
        Some(other) => Err(FieldError::new(
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

fn optional_str(o: &Map<String, Value>, field: &str) -> Result<Option<String>, FieldError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(FieldError::new(
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn operations_parse_and_name_their_missing_fields() {
        assert_eq!(
            Operation::parse(&json!({"type": "read", "path": "a.txt"})).unwrap(),
            Operation::Read {
                path: "a.txt".into()
            }
        );
        assert_eq!(
            Operation::parse(&json!({"type": "write", "path": "e", "content": ""})).unwrap(),
            Operation::Write {
                path: "e".into(),
                content: "".into()
            }
        );
        let field = |v: Value| Operation::parse(&v).unwrap_err().field;
        assert_eq!(field(json!({"type": "read"})), "path");
        assert_eq!(field(json!({"type": "write", "path": "a"})), "content");
        assert_eq!(field(json!({"type": "list", "path": " "})), "path");
        assert_eq!(field(json!({"type": "command"})), "command");
        assert_eq!(field(json!({"type": "call"})), "tool");
        assert_eq!(
            field(json!({"type": "call", "tool": "x", "arguments": [1]})),
            "arguments"
        );
        assert_eq!(field(json!({"type": "delete", "path": "a"})), "type");
        assert_eq!(field(json!({"path": "a"})), "type");
        assert_eq!(field(json!({"type": "read", "path": 3})), "path");
        let e = Operation::parse(&json!({"type": "read"})).unwrap_err();
        assert!(e.message.contains("required for 'read'"), "{e:?}");
    }

    #[test]
    fn operations_too_big_for_one_mcp_message_are_refused() {
        let ok = "a".repeat(MAX_WRITE_BYTES);
        assert!(Operation::parse(&json!({"type": "write", "path": "a", "content": ok})).is_ok());
        let big = "a".repeat(MAX_WRITE_BYTES + 1);
        let e =
            Operation::parse(&json!({"type": "write", "path": "a", "content": big})).unwrap_err();
        assert_eq!(e.field, "content");
        assert!(e.message.contains("at most 8388608 bytes"), "{e:?}");
        // 3 MiB of control characters is 18 MiB once escaped.
        let escaped = "\u{1}".repeat(3 * 1024 * 1024);
        assert_eq!(encoded_len(&escaped), 6 * escaped.len() + 2);
        let e = Operation::parse(&json!({"type": "write", "path": "a", "content": escaped}))
            .unwrap_err();
        assert_eq!(e.field, "content");
        assert!(e.message.contains("once JSON-encoded"), "{e:?}");
        let e = Operation::parse(&json!({"type": "read", "path": "p".repeat(MAX_MESSAGE_BYTES)}))
            .unwrap_err();
        assert_eq!(e.field, "path");
        let e = Operation::parse(&json!({"type": "call", "tool": "t",
            "arguments": {"blob": "\"".repeat(MAX_MESSAGE_BYTES / 2)}}))
        .unwrap_err();
        assert_eq!(e.field, "arguments");
    }

    #[test]
    fn operations_map_onto_the_tools_the_server_lists() {
        let official = tools(&[
            "read_file",
            "read_text_file",
            "write_file",
            "list_directory",
            "directory_tree",
        ]);
        let ours = tools(&[
            "list_files",
            "read_file",
            "write_file",
            "run_command",
            "sandbox_root",
        ]);
        let read = Operation::Read { path: "a".into() };
        assert_eq!(read.to_call("fs", &official).unwrap().0, "read_text_file");
        assert_eq!(read.to_call("bf", &ours).unwrap().0, "read_file");
        let list = Operation::List { path: ".".into() };
        assert_eq!(list.to_call("fs", &official).unwrap().0, "list_directory");
        assert_eq!(list.to_call("bf", &ours).unwrap().0, "list_files");
        let cmd = Operation::Command {
            command: "ls".into(),
            cwd: None,
        };
        let (tool, args) = cmd.to_call("bf", &ours).unwrap();
        assert_eq!(
            (tool.as_str(), args["command"].as_str()),
            ("run_command", Some("ls"))
        );
        let err = cmd.to_call("fs", &official).unwrap_err();
        assert!(
            err.contains("cannot do 'command' operations") && err.contains("directory_tree"),
            "{err}"
        );
        let call = Operation::Call {
            tool: "directory_tree".into(),
            arguments: Map::new(),
        };
        assert_eq!(call.to_call("fs", &official).unwrap().0, "directory_tree");
        let err = call.to_call("bf", &ours).unwrap_err();
        assert!(err.contains("has no tool 'directory_tree'"), "{err}");
        assert!(read.to_call("empty", &[]).unwrap_err().contains("no tools"));
    }
}
