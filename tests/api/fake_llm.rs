//! A scripted LLM server for the agent tests: an actix-web server on 127.0.0.1:0 that
//! speaks Ollama's `/api/chat` and the OpenAI-compatible `/v1/chat/completions`, and
//! answers each request with what the test's script returns for it. It records every
//! request and counts requests in flight and the most at once. [`SilentLlm`] takes
//! requests and never answers, to see clients give up.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake model answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Text only.
    Text(String),
    /// Native tool calls (name, arguments).
    Calls(Vec<(&'static str, Value)>),
    /// An error status with a JSON body.
    Error(u16, Value),
    /// Any status, content type and body.
    Raw(u16, &'static str, String),
    /// Waits, then answers.
    Delay(Duration, Box<Reply>),
    /// HTTP 429, with this `Retry-After` when given.
    TooMany(Option<String>),
}

/// A native call, for brevity.
pub fn call(name: &'static str, args: Value) -> Reply {
    Reply::Calls(vec![(name, args)])
}

/// One request as the script sees it.
#[derive(Debug, Clone)]
pub struct Chat {
    /// `ollama` or `openai`, from the path.
    pub api: &'static str,
    /// The request body.
    pub body: Value,
}

impl Chat {
    pub fn model(&self) -> &str {
        self.body["model"].as_str().unwrap_or_default()
    }

    pub fn messages(&self) -> &[Value] {
        self.body["messages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The task id from the task message (`Task ID: …`).
    pub fn task_id(&self) -> String {
        self.messages()
            .iter()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .and_then(|c| c.strip_prefix("Task "))
            .and_then(|c| c.split(':').next())
            .unwrap_or_default()
            .to_string()
    }

    /// Assistant replies so far in the conversation.
    pub fn replies(&self) -> usize {
        self.messages()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .count()
    }

    /// The last message.
    pub fn last(&self) -> &Value {
        self.messages().last().unwrap_or(&Value::Null)
    }

    /// The last message's text.
    pub fn last_text(&self) -> &str {
        self.last()["content"].as_str().unwrap_or_default()
    }

    pub fn has_tools(&self) -> bool {
        self.body["tools"].as_array().is_some_and(|t| !t.is_empty())
    }
}

type Script = dyn Fn(&Chat) -> Reply + Send + Sync;

struct State {
    script: Box<Script>,
    requests: Mutex<Vec<(String, Value)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    counter: AtomicUsize,
    /// Speaks only `/v1/chat/completions`, like llama.cpp's server: `/api/…` is a 404.
    openai_only: bool,
    /// `GET /api/version` requests seen.
    version_probes: AtomicUsize,
    /// When each chat request arrived.
    arrivals: Mutex<Vec<std::time::Instant>>,
    /// The `Authorization` header of every chat request (empty when absent).
    authorizations: Mutex<Vec<String>>,
}

/// A running fake server; stops when dropped.
pub struct FakeLlm {
    /// Its base URL.
    pub url: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        actix_web::rt::spawn(async move { handle.stop(false).await });
    }
}

impl FakeLlm {
    /// Starts a server answering with `script`.
    pub fn start(script: impl Fn(&Chat) -> Reply + Send + Sync + 'static) -> FakeLlm {
        Self::start_with(false, script)
    }

    /// Starts a server that speaks only the OpenAI protocol (as llama.cpp's server).
    pub fn start_openai_only(script: impl Fn(&Chat) -> Reply + Send + Sync + 'static) -> FakeLlm {
        Self::start_with(true, script)
    }

    fn start_with(
        openai_only: bool,
        script: impl Fn(&Chat) -> Reply + Send + Sync + 'static,
    ) -> FakeLlm {
        let state = Arc::new(State {
            openai_only,
            version_probes: AtomicUsize::new(0),
            arrivals: Mutex::new(Vec::new()),
            authorizations: Mutex::new(Vec::new()),
            script: Box::new(script),
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            counter: AtomicUsize::new(0),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .default_service(web::to(handle))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .bind(("127.0.0.1", 0))
        .expect("bind the fake LLM");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        FakeLlm {
            url: format!("http://127.0.0.1:{port}"),
            state,
            handle,
        }
    }

    /// Every request so far: (path, body).
    pub fn requests(&self) -> Vec<(String, Value)> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The `Authorization` header of every chat request so far (`""` when absent).
    pub fn authorizations(&self) -> Vec<String> {
        self.state.authorizations.lock().unwrap().clone()
    }

    /// `GET /api/version` requests so far (protocol detection).
    pub fn version_probes(&self) -> usize {
        self.state.version_probes.load(Ordering::SeqCst)
    }

    /// When each chat request arrived, in order.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.state.arrivals.lock().unwrap().clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Counts a request in flight while its handler lives.
struct InFlight {
    state: Arc<State>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let state = state.into_inner();
    let path = req.path().to_string();
    if path == "/api/version" {
        state.version_probes.fetch_add(1, Ordering::SeqCst);
        if !state.openai_only {
            return HttpResponse::Ok().json(json!({"version": "0.0.0-fake"}));
        }
    }
    let api = match path.as_str() {
        "/api/chat" if !state.openai_only => "ollama",
        "/v1/chat/completions" => "openai",
        _ => return HttpResponse::NotFound().body("404 page not found"),
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return HttpResponse::BadRequest().json(json!({"error": e.to_string()})),
    };
    state
        .arrivals
        .lock()
        .unwrap()
        .push(std::time::Instant::now());
    state.requests.lock().unwrap().push((path, body.clone()));
    state.authorizations.lock().unwrap().push(
        req.headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    );
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight {
        state: state.clone(),
    };
    let chat = Chat { api, body };
    let mut reply = (state.script)(&chat);
    while let Reply::Delay(d, inner) = reply {
        actix_web::rt::time::sleep(d).await;
        reply = *inner;
    }
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    render(&chat, reply, n)
}

fn render(chat: &Chat, reply: Reply, n: usize) -> HttpResponse {
    let (text, calls) = match reply {
        Reply::Text(t) => (t, Vec::new()),
        Reply::Calls(c) => (String::new(), c),
        Reply::Error(status, body) => {
            return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .json(body)
        }
        Reply::Raw(status, content_type, body) => {
            return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .content_type(content_type)
                .body(body)
        }
        Reply::TooMany(retry_after) => {
            let mut r = HttpResponse::TooManyRequests();
            if let Some(v) = retry_after {
                r.insert_header(("Retry-After", v));
            }
            return r
                .json(json!({"error": {"message": "rate limit reached", "type": "rate_limit"}}));
        }
        Reply::Delay(..) => unreachable!("delays are awaited first"),
    };
    let model = chat.model();
    if chat.api == "ollama" {
        let mut message = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            message["tool_calls"] = calls
                .iter()
                .map(|(name, args)| json!({"function": {"name": name, "arguments": args}}))
                .collect();
        }
        HttpResponse::Ok().json(json!({
            "model": model, "created_at": "2025-01-01T00:00:00Z", "message": message,
            "done": true, "done_reason": "stop",
            "prompt_eval_count": 10, "eval_count": 5, "total_duration": 1000
        }))
    } else {
        let mut message = json!({"role": "assistant",
            "content": if text.is_empty() { Value::Null } else { json!(text) }});
        if !calls.is_empty() {
            message["tool_calls"] = calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| {
                    json!({"id": format!("call_{n}_{i}"), "type": "function",
                           "function": {"name": name, "arguments": args.to_string()}})
                })
                .collect();
        }
        let finish = if calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        HttpResponse::Ok().json(json!({
            "id": format!("chatcmpl-{n}"), "object": "chat.completion", "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }))
    }
}

/// A server that reads each request whole and never answers; it counts the requests it
/// got and the connections their clients closed (aborted requests). Plain TCP, so that
/// a closed connection is seen at once.
pub struct SilentLlm {
    pub url: String,
    received: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl SilentLlm {
    pub fn start() -> SilentLlm {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (r, c) = (received.clone(), closed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (r, c) = (r.clone(), c.clone());
                std::thread::spawn(move || serve_silently(stream, &r, &c));
            }
        });
        SilentLlm {
            url,
            received,
            closed,
        }
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

fn serve_silently(mut stream: std::net::TcpStream, received: &AtomicUsize, closed: &AtomicUsize) {
    use std::io::Read;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let mut counted = false;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
        if counted {
            continue;
        }
        let text = String::from_utf8_lossy(&data);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                counted = true;
                received.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}
