//! The HTTP application: an engine plus an actix-web server. The binary and the tests
//! both start batchforge through [`Application::build`].

use crate::api::guard::SecurityConfig;
use crate::engine::{Engine, EngineBuilder, EngineConfig, StartError};
use actix_web::{dev::ServerHandle, App, HttpServer};
use std::net::{TcpListener, ToSocketAddrs};
use std::time::Duration;

/// Settings of `batchforge serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The engine's settings.
    pub engine: EngineConfig,
    /// Address to listen on; port 0 picks a free one.
    pub bind: String,
    /// How long running items may finish after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// HTTP worker threads; `None` means one per core.
    pub http_workers: Option<usize>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            engine: EngineConfig::default(),
            bind: "127.0.0.1:8000".into(),
            shutdown_grace: Duration::from_secs(10),
            http_workers: None,
        }
    }
}

/// A started engine with a bound, not yet running, HTTP server.
pub struct Application {
    engine: Engine,
    port: u16,
    server: actix_web::dev::Server,
    shutdown_grace: Duration,
}

impl Application {
    /// Starts the engine and binds the listener. Call inside an actix `System`.
    pub async fn build(config: ServeConfig) -> Result<Application, StartError> {
        Self::build_with(config, |b| b).await
    }

    /// Like [`Application::build`], letting the caller register processors first.
    pub async fn build_with(
        config: ServeConfig,
        customize: impl FnOnce(EngineBuilder) -> EngineBuilder,
    ) -> Result<Application, StartError> {
        Self::build_secured(config, SecurityConfig::default(), customize).await
    }

    /// Like [`Application::build_with`], with the API guarded by `security` (tokens,
    /// allowed origins and hosts). A non-loopback address without a token is refused
    /// before anything listens, unless `security.allow_unauthenticated`.
    pub async fn build_secured(
        mut config: ServeConfig,
        mut security: SecurityConfig,
        customize: impl FnOnce(EngineBuilder) -> EngineBuilder,
    ) -> Result<Application, StartError> {
        let addresses = config
            .bind
            .to_socket_addrs()
            .map_err(|e| StartError::Config(format!("cannot listen on {}: {e}", config.bind)))?;
        for addr in addresses {
            security.check_exposure(&addr).map_err(StartError::Config)?;
        }
        // Unreadable or unfitting certificate files refuse the start before anything listens.
        let tls = match &security.tls {
            Some(files) => Some(files.server_config().map_err(StartError::Config)?),
            None => None,
        };
        let listener = TcpListener::bind(&config.bind)
            .map_err(|e| StartError::Config(format!("cannot listen on {}: {e}", config.bind)))?;
        let local = listener
            .local_addr()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let port = local.port();
        security.bound = Some(local);
        // A command that prints the API's tokens (from an env file, a shell history) must
        // not hand them to a read-only client through its results.
        config.engine.secret_values.extend(
            security
                .tokens
                .iter()
                .chain(&security.read_tokens)
                .map(crate::secrets::Secret::new),
        );
        let engine = customize(EngineBuilder::new(config.engine)).start().await?;
        let for_http = engine.clone();
        let mut server = HttpServer::new(move || {
            App::new().configure(crate::api::secured_routes(
                for_http.clone(),
                security.clone(),
            ))
        })
        .disable_signals()
        .shutdown_timeout(5);
        if let Some(n) = config.http_workers {
            server = server.workers(n.max(1));
        }
        let server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls),
            None => server.listen(listener),
        }
        .map_err(|e| StartError::Config(format!("cannot serve on {}: {e}", config.bind)))?
        .run();
        Ok(Application {
            engine,
            port,
            server,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A handle that stops the HTTP server.
    pub fn server_handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT or SIGTERM, then drains the engine (stop claiming, let running
    /// items finish for the grace period, requeue the rest) and stops the server.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            engine,
            server,
            shutdown_grace,
            ..
        } = self;
        let handle = server.handle();
        let serving = actix_web::rt::spawn(server);
        wait_for_signal().await?;
        log::info!(
            "shutting down: no new claims, {}s grace for running items",
            shutdown_grace.as_secs_f64()
        );
        engine.shutdown(shutdown_grace).await;
        handle.stop(true).await;
        let _ = serving.await;
        log::info!("stopped");
        Ok(())
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
