//! Wiring: settings -> storage -> authorizer -> RoomManager -> HTTP server -> shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tracing::{error, info, warn};

use crate::auth::{AllowAll, Authorizer, JwtAuthorizer, JwtKey, TokenTable};
use crate::config::{AuthMode, Settings};
use crate::metrics::Metrics;
use crate::rooms::RoomManager;
use crate::storage::{self, Storage};
use crate::transport::{self, AppState, ConnectionLimiter};

/// A bound, not yet running server.
pub struct Application {
    server: actix_web::dev::Server,
    addr: SocketAddr,
    state: web::Data<AppState>,
    storage: Arc<dyn Storage>,
}

/// Stops a running [`Application`] gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    server: actix_web::dev::ServerHandle,
    state: web::Data<AppState>,
    storage: Arc<dyn Storage>,
}

impl Application {
    /// Opens storage, builds the authorizer and binds the listener (port 0 allowed).
    pub fn build(settings: &Settings) -> anyhow::Result<Application> {
        let storage = storage::open(settings.storage, &settings.data_dir, settings.durability)
            .with_context(|| format!("opening {:?} storage", settings.storage))?;
        Application::build_with_storage(settings, storage)
    }

    /// Like [`Application::build`], with a storage backend of the caller's (embedding, tests).
    pub fn build_with_storage(
        settings: &Settings,
        storage: Arc<dyn Storage>,
    ) -> anyhow::Result<Application> {
        let authorizer = authorizer(settings)?;
        let metrics = Arc::new(Metrics::default());
        let manager = RoomManager::new(storage.clone(), settings.room_config(), metrics.clone());
        let limits = &settings.limits;
        let state = web::Data::new(AppState {
            manager,
            authorizer,
            limiter: ConnectionLimiter::new(limits.max_connections, limits.max_connections_per_ip),
            metrics,
            config: settings.transport_config(),
            shutting_down: AtomicBool::new(false),
        });
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .configure(transport::routes)
        })
        // Small real-time frames: send each at once instead of waiting to coalesce (Nagle).
        .tcp_nodelay(true)
        .disable_signals()
        .shutdown_timeout(5)
        .bind(settings.addr)
        .with_context(|| format!("binding {}", settings.addr))?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .context("server bound no address")?;
        info!(%addr, storage = storage.name(), data_dir = %settings.data_dir.display(), "weft listening");
        Ok(Application {
            server: server.run(),
            addr,
            state,
            storage,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn manager(&self) -> RoomManager {
        self.state.manager.clone()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            server: self.server.handle(),
            state: self.state.clone(),
            storage: self.storage.clone(),
        }
    }

    /// Serves until the server is stopped (see [`ShutdownHandle::shutdown`]).
    pub async fn run(self) -> std::io::Result<()> {
        self.server.await
    }
}

impl ShutdownHandle {
    /// Stops accepting, closes every session (so nothing more is acked), saves every room, then
    /// stops the server. Returns false if some room could not be saved.
    pub async fn shutdown(&self) -> bool {
        info!("shutting down: no new connections, closing sessions, saving rooms");
        self.state.shutting_down.store(true, Ordering::SeqCst);
        self.server.pause().await;
        let errors = self.state.manager.close_all().await;
        for e in &errors {
            error!(error = %e, "room could not be saved at shutdown");
        }
        self.server.stop(true).await;
        self.storage.close();
        info!(unsaved_rooms = errors.len(), "shutdown complete");
        errors.is_empty()
    }
}

fn authorizer(settings: &Settings) -> anyhow::Result<Arc<dyn Authorizer>> {
    let auth = &settings.auth;
    Ok(match auth.mode {
        AuthMode::None => {
            warn!("!!! authorization is OFF (--auth none): anyone can read and write every room. Use --auth tokens or --auth jwt in production !!!");
            Arc::new(AllowAll)
        }
        AuthMode::Tokens => {
            let path = auth
                .tokens_file
                .as_ref()
                .context("--auth tokens needs --tokens-file")?;
            Arc::new(TokenTable::load(path)?)
        }
        AuthMode::Jwt => {
            let key = match (
                &auth.jwt_public_key_file,
                &auth.jwt_secret_file,
                &auth.jwt_secret,
            ) {
                (Some(path), _, _) => JwtKey::RsaPublicPem(
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                ),
                (None, Some(path), _) => JwtKey::Secret(
                    std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim_ascii()
                        .to_vec(),
                ),
                (None, None, Some(secret)) => JwtKey::Secret(secret.as_bytes().to_vec()),
                (None, None, None) => anyhow::bail!(
                    "--auth jwt needs WEFT_JWT_SECRET, --jwt-secret-file or --jwt-public-key-file"
                ),
            };
            Arc::new(
                JwtAuthorizer::new(key, auth.jwt_audience.as_deref())
                    .context("loading the JWT key")?,
            )
        }
    })
}

/// Runs the server until SIGINT or SIGTERM, then shuts down gracefully. Prints
/// `listening on ADDR` on stdout once bound, for scripts and tests.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives right after `listening on` must not kill the process
    // with the default action.
    let signals = Signals::install()?;
    let app = Application::build(&settings)?;
    println!("listening on {}", app.addr());
    let shutdown = app.shutdown_handle();
    let server = tokio::spawn(app.run());
    signals.wait().await;
    let saved = shutdown.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => error!(error = %e, "server error"),
        Ok(Err(e)) => error!(error = %e, "server task failed"),
        Err(_) => warn!("server did not stop within 10 s"),
    }
    anyhow::ensure!(
        saved,
        "some rooms could not be saved at shutdown (see the log)"
    );
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received"),
            _ = self.int.recv() => info!("SIGINT received"),
        }
    }
}
