//! Wiring: settings -> storage -> authorizer -> RoomManager (canvas and game rooms) -> HTTP server
//! -> shutdown.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_http::{HttpService, KeepAlive};
use actix_service::{
    apply_fn_factory, fn_factory, fn_service, map_config, IntoServiceFactory, Service,
    ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::AppConfig;
use actix_web::{web, App};
use anyhow::Context;
use tracing::{error, info, warn};

use crate::auth::{AllowAll, Authorizer, GameAuth, JwtAuthorizer, JwtKey, TokenTable};
use crate::config::{AuthMode, Settings};
use crate::metrics::Metrics;
use crate::protocols::canvas::CanvasRooms;
use crate::protocols::game::{GameRooms, LogicFactory, NamespaceOptions, Namespaces};
use crate::rooms::{JournalConfig, RoomManager, Tasks};
use crate::storage::{self, Storage, WriteBudget};
use crate::transport::{self, AppState, AssemblyBudget, ConnectionLimiter, Liveness};

/// A bound, not yet running server.
pub struct Application {
    server: actix_server::Server,
    addr: SocketAddr,
    state: web::Data<AppState>,
    storage: Arc<dyn Storage>,
}

/// Stops a running [`Application`] gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    server: actix_server::ServerHandle,
    state: web::Data<AppState>,
    storage: Arc<dyn Storage>,
}

/// Builds a server: settings, an optional storage backend of the caller's, and the game room
/// namespaces it serves (none by default; [`crate::protocols::game::namespaces::shipped`] are the ones the
/// `weft` binary serves).
pub struct ServerBuilder {
    settings: Settings,
    storage: Option<Arc<dyn Storage>>,
    namespaces: Namespaces,
}

impl ServerBuilder {
    pub fn new(settings: Settings) -> ServerBuilder {
        ServerBuilder {
            settings,
            storage: None,
            namespaces: Namespaces::new(),
        }
    }

    /// Uses this storage backend instead of opening the configured one.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> ServerBuilder {
        self.storage = Some(storage);
        self
    }

    /// Serves a game room namespace (`GET /api/room?namespace=NAME&id=...`).
    pub fn namespace(
        mut self,
        name: &str,
        options: NamespaceOptions,
        logic: LogicFactory,
    ) -> anyhow::Result<ServerBuilder> {
        self.namespaces
            .register(name, options, logic)
            .map_err(anyhow::Error::msg)?;
        Ok(self)
    }

    /// Serves every namespace of `namespaces` (replacing those registered so far).
    pub fn namespaces(mut self, namespaces: Namespaces) -> ServerBuilder {
        self.namespaces = namespaces;
        self
    }

    /// Opens storage (unless given), builds the authorizers and binds the listener.
    pub fn build(self) -> anyhow::Result<Application> {
        let settings = &self.settings;
        let storage = match self.storage {
            Some(storage) => storage,
            None => storage::open(settings.storage, &settings.data_dir, settings.durability)
                .with_context(|| format!("opening {:?} storage", settings.storage))?,
        };
        Application::assemble(settings, storage, self.namespaces)
    }
}

impl Application {
    /// The `weft` binary's server: the configured storage and the shipped game namespaces.
    pub fn build(settings: &Settings) -> anyhow::Result<Application> {
        ServerBuilder::new(settings.clone())
            .namespaces(crate::protocols::game::namespaces::shipped())
            .build()
    }

    /// Like [`Application::build`], with a storage backend of the caller's (embedding, tests).
    pub fn build_with_storage(
        settings: &Settings,
        storage: Arc<dyn Storage>,
    ) -> anyhow::Result<Application> {
        ServerBuilder::new(settings.clone())
            .storage(storage)
            .namespaces(crate::protocols::game::namespaces::shipped())
            .build()
    }

    fn assemble(
        settings: &Settings,
        storage: Arc<dyn Storage>,
        namespaces: Namespaces,
    ) -> anyhow::Result<Application> {
        if settings.rooms.save_throttle_ms.is_some() {
            warn!("rooms.save_throttle_ms is no longer used (every write is appended before its ack; snapshots fold every rooms.fold_interval_ms): remove it from the configuration");
        }
        let authorizer = authorizer(settings)?;
        let game_auth = Arc::new(game_auth(settings)?);
        let metrics = Arc::new(Metrics::default());
        let tasks = Tasks::current();
        let journal = JournalConfig {
            storage: storage.clone(),
            budget: WriteBudget::new(settings.storage_queue_bytes),
            metrics: metrics.clone(),
        };
        let manager = RoomManager::new(journal, tasks.clone());
        let canvas = CanvasRooms::new(manager.clone(), settings.room_config());
        let games = GameRooms::new(manager.clone(), namespaces);
        let limits = &settings.limits;
        let state = web::Data::new(AppState {
            manager,
            canvas,
            games,
            game_auth,
            authorizer,
            limiter: ConnectionLimiter::new(limits.max_connections, limits.max_connections_per_ip),
            metrics,
            config: settings.transport_config(),
            assembly: AssemblyBudget::new(limits.assembly_budget_bytes),
            liveness: Liveness::start(
                &tokio::runtime::Handle::current(),
                Duration::from_millis(limits.liveness_timeout_ms),
            ),
            closing: tokio::sync::watch::Sender::new(false),
            tasks,
        });
        let listener =
            listen(settings.addr).with_context(|| format!("binding {}", settings.addr))?;
        let addr = listener.local_addr()?;
        let app_state = state.clone();
        let server = actix_server::Server::build()
            .listen("weft", listener, move || {
                let config = &app_state.config;
                let routes = App::new()
                    .app_data(app_state.clone())
                    .configure(transport::routes)
                    .into_factory()
                    .map_err(|e: actix_web::Error| e.error_response());
                let request_timeout = config.http_request_timeout;
                let routes = apply_fn_factory(
                    map_config(routes, |_| AppConfig::default()),
                    move |req, routes| {
                        transport::within_request_deadline(request_timeout, routes.call(req))
                    },
                );
                let upgrade_state = app_state.clone();
                let upgrade = fn_factory(move || {
                    let state = upgrade_state.clone();
                    async move {
                        Ok::<_, ()>(fn_service(move |(req, framed)| {
                            transport::hand_off(state.clone(), req, framed)
                        }))
                    }
                });
                // (TCP_NODELAY is set on upgraded sockets, see `transport::hand_off`.)
                // One request per connection: actix's head deadline covers only a
                // connection's first request (see `transport::serve_connection`).
                let http = HttpService::build()
                    .client_request_timeout(config.http_head_timeout)
                    .client_disconnect_timeout(transport::LINGER)
                    .keep_alive(KeepAlive::Disabled)
                    .local_addr(addr)
                    .upgrade(upgrade)
                    .h1(routes);
                let state = app_state.clone();
                fn_factory(move || {
                    let state = state.clone();
                    let http = http.new_service(());
                    async move {
                        let http = Rc::new(http.await.map_err(|e| {
                            error!(error = ?e, "HTTP service failed to start");
                        })?);
                        Ok::<_, ()>(fn_service(move |io| {
                            let (state, http) = (state.clone(), http.clone());
                            async move {
                                transport::serve_connection(state, http, io).await;
                                Ok::<_, ()>(())
                            }
                        }))
                    }
                })
            })?
            .disable_signals()
            .shutdown_timeout(5)
            .run();
        info!(%addr, storage = storage.name(), data_dir = %settings.data_dir.display(), "weft listening");
        Ok(Application {
            server,
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

    /// The one manager of every live room, canvas and game.
    pub fn manager(&self) -> RoomManager {
        self.state.manager.clone()
    }

    /// The canvas rooms (in [`Application::manager`]).
    pub fn canvas(&self) -> CanvasRooms {
        self.state.canvas.clone()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            server: self.server.handle(),
            state: self.state.clone(),
            storage: self.storage.clone(),
        }
    }

    /// The game rooms (in [`Application::manager`]).
    pub fn games(&self) -> GameRooms {
        self.state.games.clone()
    }

    /// Serves until the server is stopped (see [`ShutdownHandle::shutdown`]).
    pub async fn run(self) -> std::io::Result<()> {
        // Expired saved game rooms are deleted, and due timers wake their rooms.
        self.state.games.start();
        self.server.await
    }
}

impl ShutdownHandle {
    /// Stops accepting, closes every session (so nothing more is acked), saves every room, then
    /// stops the server. Returns false if some room could not be saved.
    pub async fn shutdown(&self) -> bool {
        info!("shutting down: no new connections, closing sessions, saving rooms");
        self.state.closing.send_replace(true);
        self.server.pause().await;
        // Every room, canvas and game, closes at once.
        let errors = self.state.manager.close_all().await;
        for (room, e) in &errors {
            error!(%room, error = %e, "room could not be saved at shutdown");
        }
        self.server.stop(true).await;
        // Every task weft spawned (sessions finishing their close, background loops) ends
        // before storage closes under them.
        let running = self.state.tasks.shutdown(TASKS_GRACE).await;
        if running > 0 {
            warn!(running, "tasks still running at shutdown; exiting anyway");
        }
        self.storage.close();
        info!(unsaved_rooms = errors.len(), "shutdown complete");
        errors.is_empty()
    }
}

/// How long shutdown waits for the server's tasks to end once every room is closed and saved.
const TASKS_GRACE: Duration = Duration::from_secs(10);

/// Pending connections the kernel queues before accept (a reconnect storm arrives at once).
const LISTEN_BACKLOG: u32 = 2048;

/// The listening socket (address reuse, so a restarted server binds at once).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// How game room tokens are checked: the EdgeBase secret if configured; else any token with
/// `--auth none` (development), or none at all.
fn game_auth(settings: &Settings) -> anyhow::Result<GameAuth> {
    let auth = &settings.auth;
    let secret = match (&auth.edgebase_secret_file, &auth.edgebase_secret) {
        (Some(path), _) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim_ascii()
                .to_vec(),
        ),
        (None, Some(secret)) => Some(secret.as_bytes().to_vec()),
        (None, None) => None,
    };
    Ok(match (secret, auth.mode) {
        (Some(secret), _) => GameAuth::with_secret(&secret),
        (None, AuthMode::None) => {
            warn!("!!! game rooms accept any token (no EdgeBase secret, --auth none): the token's `sub` (or the token itself) is the user id. Set WEFT_EDGEBASE_SECRET in production !!!");
            GameAuth::Insecure
        }
        (None, _) => {
            warn!(
                "game rooms refuse every token: set WEFT_EDGEBASE_SECRET or --edgebase-secret-file"
            );
            GameAuth::Disabled
        }
    })
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

/// Runs the `weft` binary's server (the configured storage, the shipped game namespaces) until
/// SIGINT or SIGTERM; see [`run_until_signal`].
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    run_until_signal(
        ServerBuilder::new(settings).namespaces(crate::protocols::game::namespaces::shipped()),
    )
    .await
}

/// Builds the server and runs it until SIGINT (Ctrl-C) or SIGTERM, then shuts down gracefully
/// (every room saved). Prints `listening on ADDR` on stdout once bound, for scripts and tests.
/// Needs a Tokio runtime with I/O and time enabled.
pub async fn run_until_signal(builder: ServerBuilder) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives right after `listening on` must not kill the process
    // with the default action.
    let signals = Signals::install()?;
    let app = builder.build()?;
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
