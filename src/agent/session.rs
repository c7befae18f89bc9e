//! The agent loop for one task.
//!
//! A loop is one role's turn: the Coder on odd loops, the Reviewer on even ones, each with
//! its own model and system prompt over the same conversation. In a turn the model calls
//! tools (natively, or as JSON in its text) and gets their results back, until it calls
//! `finish`, stops calling tools, or has used `max_steps` replies. Then the check command
//! runs in the workspace: exit 0 (or 5 with "no tests" in its output, pytest's "nothing
//! collected") passes and the task is done; otherwise its output goes back into the
//! conversation and the other role takes the next loop, until `max_loops` are spent.
//!
//! Every tool call passes the [`super::guardrail`] first; a refused call is answered as a
//! refusal and counted. A reply runs at most [`MAX_CALLS_PER_REPLY`] calls (the rest are
//! answered "too many calls in one reply"), and the conversation is kept within
//! [`MAX_CONVERSATION_CHARS`] (see [`compact_conversation`]); the messages recorded for
//! the result are bounded too.

use super::guardrail;
use super::llm::{ChatRequest, LlmClient, LlmError, Message, Role, ToolCall, ToolSpec, Usage};
use super::parse::{parse_tool_calls, TextCalls};
use super::tools::{format_output, Workbench, FINISH};
use crate::processor::ProgressReporter;
use crate::sandbox::spawn::{run_sandboxed, CommandSpec};
use serde_json::{json, Map, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest tool answer sent to the model; the middle of a longer one is cut.
const MAX_TOOL_ANSWER_CHARS: usize = 24_000;
/// Longest check output sent back to the model.
const MAX_FEEDBACK_CHARS: usize = 12_000;
/// Longest message text kept in a task's result.
const MAX_RECORDED_CHARS: usize = 4_000;
/// Most messages kept in a task's result (the first few and the last ones).
const MAX_RECORDED_MESSAGES: usize = 300;
/// Replies in a row with an unparseable tool call before the turn ends.
const MAX_INVALID_IN_A_ROW: u32 = 3;
/// Most characters (counted as bytes) of the conversation sent to the model; beyond it
/// the oldest tool results are shortened, then the oldest exchanges dropped. The system
/// prompt and the task are always kept.
pub const MAX_CONVERSATION_CHARS: usize = 200_000;
/// Longest text of a model reply kept in the conversation (and each string argument of
/// its tool calls).
const MAX_ASSISTANT_CHARS: usize = 16_000;
/// Tool calls run per reply; the rest are answered "too many calls in one reply".
pub const MAX_CALLS_PER_REPLY: usize = 16;
/// Tool calls of one reply kept at all; any beyond are dropped with a note.
const MAX_CALLS_KEPT: usize = 64;
/// Most characters (counted as bytes) of all the messages kept in a task's result.
const MAX_RECORDED_TOTAL_CHARS: usize = 400_000;
/// Tool calls of one reply listed in a task's result.
const MAX_RECORDED_CALLS: usize = 16;
/// Longest check output kept in a task's result (`validator.output`).
pub const MAX_VALIDATOR_OUTPUT_CHARS: usize = 64 * 1024;
/// What a tool result shortened away says.
const RESULT_REMOVED: &str =
    "[this older tool result was removed to keep the conversation within its size limit]";

/// The two roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentRole {
    /// Does the work.
    Coder,
    /// Fixes what the check found.
    Reviewer,
}

impl AgentRole {
    /// Its name in progress notes and results.
    pub fn name(self) -> &'static str {
        match self {
            AgentRole::Coder => "coder",
            AgentRole::Reviewer => "reviewer",
        }
    }

    /// The role of loop `n` (from 1).
    pub fn of_loop(n: u32) -> Self {
        if n % 2 == 1 {
            AgentRole::Coder
        } else {
            AgentRole::Reviewer
        }
    }
}

/// How a task is run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The user's id of the task.
    pub task_id: String,
    /// What to do.
    pub description: String,
    /// Model of the Coder.
    pub coder_model: String,
    /// Model of the Reviewer.
    pub reviewer_model: String,
    /// Coder/Reviewer turns at most.
    pub max_loops: u32,
    /// Model replies per turn at most.
    pub max_steps: u32,
    /// The check, as typed.
    pub check_command: String,
    /// The check, split.
    pub check_argv: Vec<String>,
    /// Timeout of each command (tool or check).
    pub command_timeout: Duration,
    /// Output cap of each command, per stream.
    pub max_output_bytes: usize,
    /// `apply_changes: false`.
    pub read_only: bool,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Extra model options.
    pub options: Map<String, Value>,
    /// Ollama's `keep_alive`.
    pub keep_alive: Option<Value>,
}

/// The last check run.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRun {
    /// Whether it passed.
    pub passed: bool,
    /// Its exit code (`None` when killed).
    pub exit_code: Option<i32>,
    /// Status and output (its middle cut beyond [`MAX_VALIDATOR_OUTPUT_CHARS`]).
    pub output: String,
    /// Whether `output` was cut.
    pub output_truncated: bool,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The check passed.
    Passed,
    /// `max_loops` were spent without a passing check.
    LoopsSpent,
    /// The LLM could not be used (unreachable, unknown model, bad answers, …).
    LlmFailed(LlmError),
    /// The check could not be started.
    CheckFailedToStart(String),
    /// Cancelled.
    Cancelled,
}

/// Everything a task's result reports about its run.
#[derive(Debug, Default)]
pub struct Transcript {
    /// The conversation, as recorded for the result.
    pub messages: Vec<Value>,
    /// The size of each of `messages` (serialized).
    sizes: Vec<usize>,
    /// Messages left out of `messages` to keep it bounded.
    pub messages_omitted: usize,
    /// Tool calls the guardrail refused.
    pub blocked: u32,
    /// Loops started.
    pub loops: u32,
    /// Tokens used.
    pub usage: Usage,
    /// Whether the last check passed.
    pub validator_ok: bool,
    /// The last check.
    pub last_check: Option<CheckRun>,
}

impl Transcript {
    fn record(&mut self, entry: Value) {
        let size = entry.to_string().len();
        self.messages.push(entry);
        self.sizes.push(size);
        // Keep the system prompt and the task; drop the oldest after them.
        while self.messages.len() > 3
            && (self.messages.len() > MAX_RECORDED_MESSAGES
                || self.sizes.iter().sum::<usize>() > MAX_RECORDED_TOTAL_CHARS)
        {
            self.messages.remove(2);
            self.sizes.remove(2);
            self.messages_omitted += 1;
        }
    }
}

fn system_prompt(role: AgentRole, s: &Settings, native_tools: bool) -> String {
    let mut p = match role {
        AgentRole::Coder => String::from(
            "You are the Coder, an autonomous software engineer. You work on one task inside a \
             project workspace, using tools to look at and change its files.",
        ),
        AgentRole::Reviewer => String::from(
            "You are the Reviewer, a senior software engineer. Another engineer worked on the task \
             below, but the project's check still fails. Read the check's output and the relevant \
             files, find the cause, and fix it with the tools.",
        ),
    };
    p.push_str(
        "\n\nTools:\n\
         - list_files(path, recursive): list a directory.\n\
         - read_file(path): read a text file.\n\
         - write_file(path, content): write the complete new content of a file.\n\
         - run_command(command, cwd): run a command without a shell (no pipes, redirection or &&).\n\
         - finish(summary): say you are done.\n\
         Paths are relative to the workspace root; you cannot leave it. Destructive commands \
         (rm -rf, sudo, …) are refused.",
    );
    if s.read_only {
        p.push_str(
            "\nThis task is read-only: write_file and run_command are refused. Investigate and \
             answer in your summary.",
        );
    }
    p.push_str(&format!(
        "\nWhen you are done, call finish. Then the check `{}` runs in the workspace; if it fails \
         you will see its output.",
        s.check_command
    ));
    if !native_tools {
        p.push_str("\n\nTo call a tool, answer with only a JSON object per call, like:\n");
    } else {
        p.push_str(
            "\n\nIf you cannot call tools natively, answer with a JSON object per call, like:\n",
        );
    }
    p.push_str(
        "{\"name\": \"write_file\", \"arguments\": {\"path\": \"hello.py\", \"content\": \"print('hello')\\n\"}}",
    );
    p
}

/// Cuts the middle out of long text, keeping its head and tail.
pub fn clip_middle(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_string();
    }
    let half = max_chars / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(total - half).collect();
    format!("{head}\n… [{} characters cut] …\n{tail}", total - 2 * half)
}

/// The end of long text.
fn clip_tail(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_string();
    }
    let tail: String = text.chars().skip(total - max_chars).collect();
    format!("… [{} characters cut]\n{tail}", total - max_chars)
}

fn recorded_text(text: &str) -> String {
    clip_middle(text, MAX_RECORDED_CHARS)
}

/// One task's run: the conversation and the tools of its workspace.
pub struct Session<'a> {
    settings: &'a Settings,
    llm: &'a LlmClient,
    bench: Workbench,
    progress: &'a ProgressReporter,
    cancel: &'a CancellationToken,
    specs: Vec<ToolSpec>,
    /// Offer tools natively; off for the rest of the task once the model refuses them.
    native_tools: bool,
    conversation: Vec<Message>,
    /// Messages dropped from the conversation to keep it within its budget.
    dropped_messages: usize,
    /// What the result reports.
    pub transcript: Transcript,
}

enum TurnEnd {
    Done,
    Llm(LlmError),
    Cancelled,
}

impl<'a> Session<'a> {
    /// A session of `settings` with the tools of `bench`.
    pub fn new(
        settings: &'a Settings,
        llm: &'a LlmClient,
        bench: Workbench,
        progress: &'a ProgressReporter,
        cancel: &'a CancellationToken,
    ) -> Self {
        let task = format!("Task {}: {}", settings.task_id, settings.description);
        let mut s = Session {
            settings,
            llm,
            bench,
            progress,
            cancel,
            specs: super::tools::specs(),
            native_tools: true,
            conversation: vec![
                Message::text(
                    Role::System,
                    system_prompt(AgentRole::Coder, settings, true),
                ),
                Message::text(Role::User, task.clone()),
            ],
            dropped_messages: 0,
            transcript: Transcript::default(),
        };
        s.transcript
            .record(json!({"role": "system", "agent": "coder",
            "content": recorded_text(&s.conversation[0].content)}));
        s.transcript
            .record(json!({"role": "user", "content": recorded_text(&task)}));
        s
    }

    /// Files written through `write_file`.
    pub fn written(&self) -> Vec<String> {
        self.bench.written().iter().cloned().collect()
    }

    /// Runs the loops.
    pub async fn run(&mut self) -> Ending {
        let s = self.settings;
        for n in 1..=s.max_loops {
            let role = AgentRole::of_loop(n);
            self.transcript.loops = n;
            self.progress
                .current(format!("{}: loop {n} ({})", s.task_id, role.name()));
            if n > 1 {
                self.transcript
                    .record(json!({"role": "system", "agent": role.name(),
                    "content": format!("loop {n}: the {} takes over", role.name())}));
            }
            match self.turn(role).await {
                TurnEnd::Done => {}
                TurnEnd::Llm(e) => return Ending::LlmFailed(e),
                TurnEnd::Cancelled => return Ending::Cancelled,
            }
            self.progress.current(format!(
                "{}: loop {n} ({}), checking",
                s.task_id,
                role.name()
            ));
            let check = match self.check().await {
                Ok(c) => c,
                Err(Ending::Cancelled) => return Ending::Cancelled,
                Err(other) => return other,
            };
            let passed = check.passed;
            self.transcript.validator_ok = passed;
            self.transcript.record(
                json!({"role": "validator", "content": recorded_text(&check.output),
                "passed": passed, "exit_code": check.exit_code}),
            );
            self.transcript.last_check = Some(check.clone());
            if passed {
                return Ending::Passed;
            }
            if n < s.max_loops {
                let next = AgentRole::of_loop(n + 1);
                let feedback = format!(
                    "The check `{}` failed after loop {n}:\n```\n{}\n```\nYou are now the {}. Find the cause, fix it with the tools, then call finish.",
                    s.check_command,
                    clip_tail(&check.output, MAX_FEEDBACK_CHARS),
                    next.name()
                );
                self.conversation
                    .push(Message::text(Role::User, feedback.clone()));
                self.compact();
                self.transcript
                    .record(json!({"role": "user", "content": recorded_text(&feedback)}));
            }
        }
        Ending::LoopsSpent
    }

    async fn turn(&mut self, role: AgentRole) -> TurnEnd {
        let s = self.settings;
        let model = match role {
            AgentRole::Coder => s.coder_model.as_str(),
            AgentRole::Reviewer => s.reviewer_model.as_str(),
        };
        let mut invalid_in_a_row = 0;
        for _ in 0..s.max_steps {
            self.conversation[0] =
                Message::text(Role::System, system_prompt(role, s, self.native_tools));
            let reply = {
                let tools: &[ToolSpec] = if self.native_tools { &self.specs } else { &[] };
                let req = ChatRequest {
                    model,
                    messages: &self.conversation,
                    tools,
                    temperature: s.temperature,
                    options: &s.options,
                    keep_alive: s.keep_alive.as_ref(),
                };
                self.llm.chat(&req, self.cancel).await
            };
            let reply = match reply {
                Ok(r) => r,
                Err(LlmError::ToolsUnsupported { .. }) if self.native_tools => {
                    // The model takes no tools: it writes its calls as JSON instead.
                    log::info!("model '{model}' takes no native tools; asking for JSON tool calls");
                    self.native_tools = false;
                    continue;
                }
                Err(LlmError::Cancelled) => return TurnEnd::Cancelled,
                Err(e) => return TurnEnd::Llm(e),
            };
            self.transcript.usage += reply.usage;
            let message = reply.message;
            let (calls, native) = if !message.tool_calls.is_empty() {
                (Ok(message.tool_calls.clone()), true)
            } else {
                match parse_tool_calls(&message.content) {
                    TextCalls::Calls(c) => (Ok(c), false),
                    TextCalls::None => (Ok(Vec::new()), false),
                    TextCalls::Invalid(reason) => (Err(reason), false),
                }
            };
            let mut entry = json!({"role": "assistant", "agent": role.name(), "model": model,
                "content": recorded_text(&message.content)});
            if let Ok(c) = &calls {
                if !c.is_empty() {
                    entry["tool_calls"] = Value::Array(
                        c.iter()
                            .take(MAX_RECORDED_CALLS)
                            .map(|c| json!({"name": c.name, "arguments": recorded_args(&c.arguments)}))
                            .collect(),
                    );
                    if c.len() > MAX_RECORDED_CALLS {
                        entry["tool_calls_omitted"] = json!(c.len() - MAX_RECORDED_CALLS);
                    }
                }
            }
            self.transcript.record(entry);
            // What the conversation keeps of the reply: its text and calls bounded.
            let mut calls = calls;
            let mut dropped_calls = 0;
            if let Ok(c) = &mut calls {
                if c.len() > MAX_CALLS_KEPT {
                    dropped_calls = c.len() - MAX_CALLS_KEPT;
                    c.truncate(MAX_CALLS_KEPT);
                }
            }
            let mut message = message;
            message.content = clip_middle(&message.content, MAX_ASSISTANT_CHARS);
            if native {
                message.tool_calls.truncate(MAX_CALLS_KEPT);
                for c in &mut message.tool_calls {
                    c.arguments = clip_args(&c.arguments, MAX_ASSISTANT_CHARS);
                }
            }
            self.conversation.push(message);
            let calls = match calls {
                Ok(c) => c,
                Err(reason) => {
                    invalid_in_a_row += 1;
                    let note = format!(
                        "Your tool call could not be read: {reason}. Answer with one valid JSON object per call, \
                         e.g. {{\"name\": \"read_file\", \"arguments\": {{\"path\": \"README.md\"}}}}."
                    );
                    self.conversation
                        .push(Message::text(Role::User, note.clone()));
                    self.transcript
                        .record(json!({"role": "user", "content": recorded_text(&note)}));
                    if invalid_in_a_row >= MAX_INVALID_IN_A_ROW {
                        return TurnEnd::Done;
                    }
                    continue;
                }
            };
            invalid_in_a_row = 0;
            if calls.is_empty() {
                return TurnEnd::Done;
            }
            let mut finished = false;
            let mut text_results = Vec::new();
            for (i, call) in calls.iter().enumerate() {
                if self.cancel.is_cancelled() {
                    return TurnEnd::Cancelled;
                }
                let (answer, blocked) = if i < MAX_CALLS_PER_REPLY {
                    self.run_tool(call).await
                } else {
                    (
                        format!(
                            "not run: too many calls in one reply (at most {MAX_CALLS_PER_REPLY} are run per reply); make it again in your next reply if it is still needed"
                        ),
                        false,
                    )
                };
                if call.name == FINISH && !blocked {
                    finished = true;
                }
                let mut rec = json!({"role": "tool", "name": call.name,
                    "content": recorded_text(&answer)});
                if blocked {
                    rec["blocked"] = json!(true);
                }
                self.transcript.record(rec);
                if native {
                    self.conversation.push(Message::tool_result(call, answer));
                } else {
                    text_results.push(format!("Result of {}:\n{answer}", call.name));
                }
            }
            if dropped_calls > 0 {
                text_results.push(format!(
                    "{dropped_calls} more tool calls of your reply were dropped: too many calls in one reply"
                ));
            }
            if !text_results.is_empty() {
                self.conversation
                    .push(Message::text(Role::User, text_results.join("\n\n")));
            }
            self.compact();
            if self.cancel.is_cancelled() {
                return TurnEnd::Cancelled;
            }
            if finished {
                return TurnEnd::Done;
            }
        }
        TurnEnd::Done
    }

    /// Keeps the conversation within [`MAX_CONVERSATION_CHARS`].
    fn compact(&mut self) {
        let dropped = compact_conversation(
            &mut self.conversation,
            MAX_CONVERSATION_CHARS,
            self.dropped_messages,
        );
        self.dropped_messages += dropped;
    }

    /// Runs one call past the guardrail; the answer for the model and whether it was
    /// refused.
    async fn run_tool(&mut self, call: &ToolCall) -> (String, bool) {
        let s = self.settings;
        if let Err(reason) =
            guardrail::check_call(&call.name, &call.arguments, self.bench.root(), s.read_only)
        {
            self.transcript.blocked += 1;
            log::info!("task {}: blocked {}: {reason}", s.task_id, call.name);
            return (
                format!("BLOCKED by the guardrail: {reason}. This call was not run; do not try it again."),
                true,
            );
        }
        if call.name == "run_command" {
            if let Some(c) = call.arguments.get("command").and_then(Value::as_str) {
                self.progress.current(format!(
                    "{}: loop {} ({}), running {c}",
                    s.task_id,
                    self.transcript.loops,
                    AgentRole::of_loop(self.transcript.loops).name()
                ));
            }
        }
        let answer = self.bench.run(call, self.cancel).await;
        (clip_middle(&answer.text, MAX_TOOL_ANSWER_CHARS), false)
    }

    async fn check(&mut self) -> Result<CheckRun, Ending> {
        let s = self.settings;
        let spec = CommandSpec {
            argv: s.check_argv.clone(),
            cwd: self.bench.root().to_path_buf(),
            timeout: s.command_timeout,
            max_output_bytes: s.max_output_bytes,
        };
        let out = run_sandboxed(&spec, self.bench.env(), self.bench.sandbox(), self.cancel)
            .await
            .map_err(|e| {
                Ending::CheckFailedToStart(format!(
                    "cannot start the check '{}': {e}",
                    s.check_command
                ))
            })?;
        if out.cancelled {
            return Err(Ending::Cancelled);
        }
        let status = if let Some(limit) = &out.limit {
            format!("{limit}; killed")
        } else if out.timed_out {
            format!("timed out after {:.0}s", s.command_timeout.as_secs_f64())
        } else {
            match (out.exit_code, out.signal) {
                (Some(code), _) => format!("exit code {code}"),
                (None, sig) => format!("killed by signal {}", sig.unwrap_or(0)),
            }
        };
        let output = format_output(&status, &out.stdout, &out.stderr, out.truncated);
        let output_truncated = output.chars().count() > MAX_VALIDATOR_OUTPUT_CHARS;
        Ok(CheckRun {
            passed: !out.timed_out && check_passes(out.exit_code, &out.stdout, &out.stderr),
            exit_code: out.exit_code,
            output: clip_middle(&output, MAX_VALIDATOR_OUTPUT_CHARS),
            output_truncated,
        })
    }
}

/// Whether a check passed: exit 0, or pytest's 5 ("no tests ran") when it says so.
pub fn check_passes(exit_code: Option<i32>, stdout: &str, stderr: &str) -> bool {
    match exit_code {
        Some(0) => true,
        Some(5) => {
            let said = |s: &str| s.to_ascii_lowercase().contains("no tests");
            said(stdout) || said(stderr)
        }
        _ => false,
    }
}

/// A message's size as the budget counts it: its text and its calls' names and arguments.
fn message_size(m: &Message) -> usize {
    m.content.len()
        + m.tool_calls
            .iter()
            .map(|c| c.name.len() + c.arguments.to_string().len())
            .sum::<usize>()
}

/// Tool call arguments with long strings clipped.
fn clip_args(args: &Value, max_chars: usize) -> Value {
    match args {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), clip_args(v, max_chars)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| clip_args(v, max_chars)).collect()),
        Value::String(s) => Value::String(clip_middle(s, max_chars)),
        other => other.clone(),
    }
}

fn removed_note(n: usize) -> String {
    format!("[{n} earlier messages were removed to keep the conversation within its size limit; the task is above, the latest work below]")
}

/// Shortens the messages `range` of `conversation`, oldest first, until `total` is
/// within `budget`: tool results to a stub (`stub`) or their middle cut to `limit`
/// characters, with the replies' text and arguments. Whether it got within.
fn shorten(
    conversation: &mut [Message],
    range: std::ops::Range<usize>,
    limit: usize,
    stub: bool,
    total: &mut usize,
    budget: usize,
) -> bool {
    for m in &mut conversation[range] {
        if *total <= budget {
            return true;
        }
        let before = message_size(m);
        match m.role {
            Role::Tool if stub && m.content.len() > RESULT_REMOVED.len() => {
                m.content = RESULT_REMOVED.to_string()
            }
            Role::Tool | Role::User | Role::Assistant => {
                m.content = clip_middle(&m.content, limit);
                for c in &mut m.tool_calls {
                    c.arguments = clip_args(&c.arguments, limit / 4);
                }
            }
            Role::System => {}
        }
        *total = *total - before + message_size(m);
    }
    *total <= budget
}

/// Brings `conversation` within `budget`, keeping the system prompt and the task: first
/// the messages before the last reply are shortened (tool results cut, then stubbed),
/// then the oldest exchanges (a reply with the results of its calls) are dropped, noted
/// in one message after the task; only then is the last exchange itself shortened.
/// `already_dropped` counts earlier drops (the note is there when it is not 0). Returns
/// how many messages it dropped.
pub fn compact_conversation(
    conversation: &mut Vec<Message>,
    budget: usize,
    already_dropped: usize,
) -> usize {
    let mut total: usize = conversation.iter().map(message_size).sum();
    if total <= budget {
        return 0;
    }
    let first = if already_dropped > 0 { 3 } else { 2 };
    let last_reply = |c: &[Message]| {
        c.iter()
            .rposition(|m| m.role == Role::Assistant)
            .unwrap_or(c.len())
            .max(first)
    };
    let old = first..last_reply(conversation);
    if shorten(conversation, old.clone(), 2_000, false, &mut total, budget)
        || shorten(conversation, old, 300, true, &mut total, budget)
    {
        return 0;
    }
    // Drop whole exchanges, oldest first, never the last reply and what follows it.
    let mut dropped = 0;
    while total > budget && first < last_reply(conversation) {
        total -= message_size(&conversation.remove(first));
        dropped += 1;
        while conversation
            .get(first)
            .is_some_and(|m| m.role == Role::Tool)
        {
            total -= message_size(&conversation.remove(first));
            dropped += 1;
        }
    }
    if dropped > 0 {
        let note = Message::text(Role::User, removed_note(already_dropped + dropped));
        total += message_size(&note);
        if already_dropped > 0 {
            total -= message_size(&conversation[2]);
            conversation[2] = note;
        } else {
            conversation.insert(2, note);
        }
    }
    let recent = last_reply(conversation) + usize::from(dropped > 0 && already_dropped == 0);
    let recent = recent.min(conversation.len())..conversation.len();
    if !shorten(
        conversation,
        recent.clone(),
        2_000,
        false,
        &mut total,
        budget,
    ) {
        shorten(conversation, recent, 300, true, &mut total, budget);
    }
    dropped
}

fn recorded_args(args: &Value) -> Value {
    match args {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => Value::String(recorded_text(s)),
                        other => other.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::String(s) => Value::String(recorded_text(s)),
        other => other.clone(),
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
