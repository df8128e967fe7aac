//! One typed settings tree, layered: defaults -> TOML file (`--config`) -> `WEFT_*` environment ->
//! command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::Limits;
use crate::protocols::canvas::RoomConfig;
use crate::storage::{Durability, StorageKind};
use crate::transport::TransportConfig;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Where storage keeps its files.
    pub data_dir: PathBuf,
    pub storage: StorageKind,
    /// With RocksDB or file storage: what an acked write survives.
    pub durability: Durability,
    /// Bytes of appends queued for the storage writer at once, across all rooms; a room with a
    /// batch that does not fit waits (and stops reading its command queue).
    pub storage_queue_bytes: usize,
    pub log_format: LogFormat,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub rooms: RoomSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everyone may read and write every room. Development only.
    None,
    /// A static table of tokens from `tokens_file`.
    Tokens,
    /// JSON Web Tokens: HS256 with `jwt_secret`/`jwt_secret_file`, or RS256 with `jwt_public_key_file`.
    Jwt,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub tokens_file: Option<PathBuf>,
    /// Prefer `jwt_secret_file` or the `WEFT_JWT_SECRET` environment variable to a secret in a
    /// config file.
    pub jwt_secret: Option<String>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, JWTs must carry this `aud`.
    pub jwt_audience: Option<String>,
    /// Game rooms: the EdgeBase user secret that signs access tokens. Prefer
    /// `edgebase_secret_file` or `WEFT_EDGEBASE_SECRET`. Without one, game rooms accept any token
    /// (development only) when `mode` is `none`, and refuse every token otherwise.
    pub edgebase_secret: Option<String>,
    pub edgebase_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    pub max_frame_bytes: usize,
    /// Bytes waiting for one connection beyond which it is closed as too slow (1013).
    pub outbound_queue_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub messages_per_second: f64,
    pub message_burst: u32,
    pub max_buffer_len: usize,
    /// Largest canvas document, as the length of its JSON (see `engine::Limits`).
    pub max_document_bytes: usize,
    /// Most JSON values a canvas document may hold (memory: ~80 bytes each).
    pub max_document_values: usize,
    /// Most values one canvas request may create.
    pub max_request_values: usize,
    /// Most fields one component may have.
    pub max_fields_per_component: usize,
    /// Largest presence state of one session, as the length of its JSON.
    pub max_presence_bytes: usize,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// Game rooms: time allowed for the `auth` frame.
    pub game_auth_timeout_ms: u64,
    /// Game rooms: a connection silent this long is closed (keep above the SDKs' 30 s ping).
    pub game_stale_timeout_ms: u64,
    /// A WebSocket message (all its fragments) must be complete this long after its first bytes.
    pub message_assembly_timeout_ms: u64,
    /// Bytes of unfinished WebSocket messages all connections together may hold.
    pub assembly_budget_bytes: usize,
    /// Plain HTTP: the request head must arrive within this after the connection opened (408).
    pub http_head_timeout_ms: u64,
    /// Plain HTTP: after its head, the request's body must arrive and its answer be ready within
    /// this (408, connection closed).
    pub http_request_timeout_ms: u64,
    /// `/healthz` answers 503 when a worker of the main runtime (where rooms run) has been stuck
    /// in one task for this long.
    pub liveness_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomSettings {
    pub idle_timeout_ms: u64,
    pub fold_interval_ms: u64,
    /// Read from older configuration files and ignored (with a warning at startup): every write
    /// is now appended before its ack, and snapshots fold every `fold_interval_ms`.
    #[serde(default, skip_serializing)]
    pub save_throttle_ms: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            addr: SocketAddr::from(([127, 0, 0, 1], 8787)),
            data_dir: PathBuf::from("./data"),
            storage: StorageKind::Rocksdb,
            durability: Durability::ProcessCrash,
            storage_queue_bytes: crate::storage::DEFAULT_STORAGE_QUEUE_BYTES,
            log_format: LogFormat::Text,
            auth: AuthSettings::default(),
            limits: LimitSettings::default(),
            rooms: RoomSettings::default(),
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mode: AuthMode::None,
            tokens_file: None,
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwt_audience: None,
            edgebase_secret: None,
            edgebase_secret_file: None,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        let transport = TransportConfig::default();
        let engine = Limits::default();
        LimitSettings {
            max_frame_bytes: transport.max_frame_bytes,
            outbound_queue_bytes: transport.outbound_queue_bytes,
            max_connections: 10_000,
            max_connections_per_ip: 512,
            messages_per_second: transport.messages_per_second,
            message_burst: transport.message_burst,
            max_buffer_len: engine.max_buffer_len,
            max_document_bytes: engine.max_document_bytes,
            max_document_values: engine.max_document_values,
            max_request_values: engine.max_request_values,
            max_fields_per_component: engine.max_fields_per_component,
            max_presence_bytes: engine.max_presence_bytes,
            heartbeat_interval_ms: transport.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: transport.heartbeat_timeout.as_millis() as u64,
            game_auth_timeout_ms: transport.game_auth_timeout.as_millis() as u64,
            game_stale_timeout_ms: transport.game_stale_timeout.as_millis() as u64,
            message_assembly_timeout_ms: transport.message_assembly_timeout.as_millis() as u64,
            assembly_budget_bytes: 64 << 20,
            http_head_timeout_ms: transport.http_head_timeout.as_millis() as u64,
            http_request_timeout_ms: transport.http_request_timeout.as_millis() as u64,
            liveness_timeout_ms: 5000,
        }
    }
}

impl Default for RoomSettings {
    fn default() -> Self {
        let rooms = RoomConfig::default();
        RoomSettings {
            idle_timeout_ms: rooms.idle_timeout.as_millis() as u64,
            fold_interval_ms: rooms.fold_interval.as_millis() as u64,
            save_throttle_ms: None,
        }
    }
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Where the settings come from and where rooms are stored: shared by `weft serve` and the
/// `weft snapshot` commands.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct StorageArgs {
    /// TOML config file.
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./data].
    #[arg(long, env = "WEFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage backend [default: rocksdb].
    #[arg(long, env = "WEFT_STORAGE")]
    pub storage: Option<StorageKind>,
    /// With RocksDB or file storage, what an acked write survives [default: process-crash].
    #[arg(long, env = "WEFT_DURABILITY")]
    pub durability: Option<Durability>,
}

/// Command-line (and `WEFT_*` environment) overrides; unset ones keep the file's value.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Listen address [default: 127.0.0.1:8787].
    #[arg(long, env = "WEFT_ADDR")]
    pub addr: Option<SocketAddr>,
    /// Log format [default: text].
    #[arg(long, env = "WEFT_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Authorization mode [default: none].
    #[arg(long, env = "WEFT_AUTH")]
    pub auth: Option<AuthMode>,
    /// Token table for `--auth tokens`.
    #[arg(long, env = "WEFT_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// File holding the HS256 secret for `--auth jwt` (or set WEFT_JWT_SECRET).
    #[arg(long, env = "WEFT_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// RSA public key (PEM) for RS256 with `--auth jwt`.
    #[arg(long, env = "WEFT_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Audience JWTs must name in `aud` (unchecked when unset).
    #[arg(long, env = "WEFT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// File holding the EdgeBase user secret for game room tokens (or set WEFT_EDGEBASE_SECRET).
    #[arg(long, env = "WEFT_EDGEBASE_SECRET_FILE")]
    pub edgebase_secret_file: Option<PathBuf>,
    /// Largest accepted frame in bytes.
    #[arg(long, env = "WEFT_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Bytes waiting for one connection before it is closed as too slow.
    #[arg(long, env = "WEFT_OUTBOUND_QUEUE_BYTES")]
    pub outbound_queue_bytes: Option<usize>,
    /// Cap on open connections.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Cap on open connections per peer address.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Average messages per second a connection may send.
    #[arg(long, env = "WEFT_MESSAGES_PER_SECOND")]
    pub messages_per_second: Option<f64>,
    /// Burst of messages a connection may send at once.
    #[arg(long, env = "WEFT_MESSAGE_BURST")]
    pub message_burst: Option<u32>,
    /// Empty rooms are closed after this many milliseconds.
    #[arg(long, env = "WEFT_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// How often a changing room's log is folded into its snapshot.
    #[arg(long, env = "WEFT_FOLD_INTERVAL_MS")]
    pub fold_interval_ms: Option<u64>,
    /// Bytes of writes queued for storage at once; rooms wait beyond [default: 67108864].
    #[arg(long, env = "WEFT_STORAGE_QUEUE_BYTES")]
    pub storage_queue_bytes: Option<usize>,
}

impl Settings {
    /// Defaults, then the config file, then the overrides.
    pub fn load(overrides: &Overrides) -> Result<Settings, ConfigError> {
        let mut settings = match &overrides.storage.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        // WEFT_JWT_SECRET is read from the environment only, so secrets stay off command lines.
        if let Ok(secret) = std::env::var("WEFT_JWT_SECRET") {
            settings.auth.jwt_secret = Some(secret);
        }
        if let Ok(secret) = std::env::var("WEFT_EDGEBASE_SECRET") {
            settings.auth.edgebase_secret = Some(secret);
        }
        let o = overrides.clone();
        set(&mut settings.addr, o.addr);
        set(&mut settings.data_dir, o.storage.data_dir);
        set(&mut settings.storage, o.storage.storage);
        set(&mut settings.durability, o.storage.durability);
        set(&mut settings.log_format, o.log_format);
        set(&mut settings.auth.mode, o.auth);
        let auth = &mut settings.auth;
        set_some(&mut auth.tokens_file, o.tokens_file);
        set_some(&mut auth.jwt_secret_file, o.jwt_secret_file);
        set_some(&mut auth.jwt_public_key_file, o.jwt_public_key_file);
        set_some(&mut auth.jwt_audience, o.jwt_audience);
        set_some(&mut auth.edgebase_secret_file, o.edgebase_secret_file);
        let limits = &mut settings.limits;
        set(&mut limits.max_frame_bytes, o.max_frame_bytes);
        set(&mut limits.outbound_queue_bytes, o.outbound_queue_bytes);
        set(&mut limits.max_connections, o.max_connections);
        set(&mut limits.max_connections_per_ip, o.max_connections_per_ip);
        set(&mut limits.messages_per_second, o.messages_per_second);
        set(&mut limits.message_burst, o.message_burst);
        set(&mut settings.rooms.idle_timeout_ms, o.idle_timeout_ms);
        set(&mut settings.storage_queue_bytes, o.storage_queue_bytes);
        set(&mut settings.rooms.fold_interval_ms, o.fold_interval_ms);
        settings.validate()?;
        Ok(settings)
    }

    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown,
            source,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive = [
            ("storage_queue_bytes", self.storage_queue_bytes as f64),
            ("limits.max_frame_bytes", l.max_frame_bytes as f64),
            ("limits.outbound_queue_bytes", l.outbound_queue_bytes as f64),
            ("limits.max_connections", l.max_connections as f64),
            (
                "limits.max_connections_per_ip",
                l.max_connections_per_ip as f64,
            ),
            ("limits.messages_per_second", l.messages_per_second),
            ("limits.message_burst", f64::from(l.message_burst)),
            (
                "limits.heartbeat_interval_ms",
                l.heartbeat_interval_ms as f64,
            ),
            ("limits.heartbeat_timeout_ms", l.heartbeat_timeout_ms as f64),
            ("limits.game_auth_timeout_ms", l.game_auth_timeout_ms as f64),
            (
                "limits.message_assembly_timeout_ms",
                l.message_assembly_timeout_ms as f64,
            ),
            (
                "limits.assembly_budget_bytes",
                l.assembly_budget_bytes as f64,
            ),
            ("limits.http_head_timeout_ms", l.http_head_timeout_ms as f64),
            (
                "limits.http_request_timeout_ms",
                l.http_request_timeout_ms as f64,
            ),
            ("limits.liveness_timeout_ms", l.liveness_timeout_ms as f64),
            ("limits.max_document_bytes", l.max_document_bytes as f64),
            ("limits.max_document_values", l.max_document_values as f64),
            ("limits.max_request_values", l.max_request_values as f64),
            (
                "limits.max_fields_per_component",
                l.max_fields_per_component as f64,
            ),
            ("limits.max_presence_bytes", l.max_presence_bytes as f64),
        ];
        for (name, value) in positive {
            if !(value > 0.0 && value.is_finite()) {
                return Err(ConfigError::Invalid(format!("{name} must be positive")));
            }
        }
        if l.game_stale_timeout_ms <= 30_000 {
            return Err(ConfigError::Invalid(
                "limits.game_stale_timeout_ms must exceed 30000 (the SDKs ping every 30 s)".into(),
            ));
        }
        if l.heartbeat_timeout_ms <= l.heartbeat_interval_ms {
            return Err(ConfigError::Invalid(
                "limits.heartbeat_timeout_ms must exceed limits.heartbeat_interval_ms".into(),
            ));
        }
        Ok(())
    }

    pub fn room_config(&self) -> RoomConfig {
        RoomConfig {
            idle_timeout: Duration::from_millis(self.rooms.idle_timeout_ms),
            fold_interval: Duration::from_millis(self.rooms.fold_interval_ms),
            limits: self.engine_limits(),
        }
    }

    pub fn transport_config(&self) -> TransportConfig {
        let l = &self.limits;
        TransportConfig {
            max_frame_bytes: l.max_frame_bytes,
            message_assembly_timeout: Duration::from_millis(l.message_assembly_timeout_ms),
            http_head_timeout: Duration::from_millis(l.http_head_timeout_ms),
            http_request_timeout: Duration::from_millis(l.http_request_timeout_ms),
            outbound_queue_bytes: l.outbound_queue_bytes,
            messages_per_second: l.messages_per_second,
            message_burst: l.message_burst,
            heartbeat_interval: Duration::from_millis(l.heartbeat_interval_ms),
            heartbeat_timeout: Duration::from_millis(l.heartbeat_timeout_ms),
            limits: self.engine_limits(),
            game_auth_timeout: Duration::from_millis(l.game_auth_timeout_ms),
            game_stale_timeout: Duration::from_millis(l.game_stale_timeout_ms),
        }
    }

    fn engine_limits(&self) -> Limits {
        let l = &self.limits;
        Limits {
            max_buffer_len: l.max_buffer_len,
            max_document_bytes: l.max_document_bytes,
            max_document_values: l.max_document_values,
            max_request_values: l.max_request_values,
            max_fields_per_component: l.max_fields_per_component,
            max_presence_bytes: l.max_presence_bytes,
        }
    }
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

fn set_some<T>(target: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *target = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file overrides defaults, flags override the file, and unknown keys are errors.
    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("weft.toml");
        std::fs::write(
            &path,
            "addr = \"0.0.0.0:9000\"\nstorage = \"memory\"\n[rooms]\nidle_timeout_ms = 5\n[limits]\nmax_frame_bytes = 100\n",
        )
        .expect("write");
        let overrides = Overrides {
            storage: StorageArgs {
                config: Some(path.clone()),
                ..StorageArgs::default()
            },
            max_frame_bytes: Some(200),
            ..Overrides::default()
        };
        let s = Settings::load(&overrides).expect("loads");
        assert_eq!(s.addr, "0.0.0.0:9000".parse().expect("addr"));
        assert_eq!(s.storage, StorageKind::Memory);
        assert_eq!(s.rooms.idle_timeout_ms, 5);
        assert_eq!(s.limits.max_frame_bytes, 200);
        assert_eq!(
            s.rooms.fold_interval_ms,
            RoomSettings::default().fold_interval_ms
        );

        // A setting of older versions is still read (and ignored with a warning at startup).
        std::fs::write(&path, "[rooms]\nsave_throttle_ms = 1000\n").expect("write");
        let s = Settings::load(&overrides).expect("an older config loads");
        assert_eq!(s.rooms.save_throttle_ms, Some(1000));

        std::fs::write(&path, "adr = \"x\"\n").expect("write");
        assert!(matches!(
            Settings::load(&overrides),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(&path, "[limits]\nmessages_per_second = 0\n").expect("write");
        assert!(matches!(
            Settings::load(&overrides),
            Err(ConfigError::Invalid(_))
        ));
    }

    /// The documented example config is valid and matches the defaults.
    #[test]
    fn example_config_is_the_default() {
        let example = Settings::from_file(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/weft.example.toml"
        )))
        .expect("example parses");
        assert_eq!(example, Settings::default());
    }
}
