//! The relay's configuration: every flag, its environment variable and its default.
//!
//! One struct parsed by clap serves the binary (`--help` is generated from the
//! doc comments below) and the tests, which build it with
//! [`Config::for_tests`] and adjust the fields they exercise.

use clap::{Parser, ValueEnum};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Ghostwire's blind WebSocket relay: pairs exactly two clients per room code
/// and forwards their SIGNAL frames without reading them.
///
/// Durations take a unit (`500ms`, `10s`, `5m`); a bare number means seconds.
#[derive(Debug, Clone, Parser)]
#[command(name = "ghostwire-relay", version, about, long_about, after_long_help = AFTER_HELP)]
pub struct Config {
    /// Address the WebSocket listener binds (ws://, or wss:// with --tls-cert). Served on `/` and `/ws`.
    #[arg(long, env = "GHOSTWIRE_LISTEN", default_value = "127.0.0.1:8765")]
    pub listen: SocketAddr,

    /// Address of the admin listener: /healthz, /readyz and /metrics. Never the public port.
    #[arg(long, env = "GHOSTWIRE_ADMIN_LISTEN", default_value = "127.0.0.1:9765")]
    pub admin_listen: SocketAddr,

    /// PEM certificate chain: serve wss:// (TLS through rustls). Needs --tls-key.
    #[arg(long, env = "GHOSTWIRE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "GHOSTWIRE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest frame accepted, in bytes; a larger one is refused before it is buffered (ERROR 4005).
    #[arg(long, env = "GHOSTWIRE_MAX_FRAME_BYTES", default_value_t = ghostwire_shared::DEFAULT_MAX_FRAME_BYTES, value_parser = clap::value_parser!(usize))]
    pub max_frame_bytes: usize,

    /// Frames per second each connection may send, sustained (token bucket; ERROR 4004 above it).
    #[arg(long, env = "GHOSTWIRE_FRAME_RATE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub frame_rate: u32,

    /// Frames each connection may send in one burst (token bucket size).
    #[arg(long, env = "GHOSTWIRE_FRAME_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub frame_burst: u32,

    /// Bytes per second each connection may send in bulk frames (over 8 KiB: file chunks),
    /// sustained. Above it the relay reads more slowly (the sender is slowed, never cut off);
    /// bulk frames cost no --frame-rate tokens.
    #[arg(long, env = "GHOSTWIRE_BYTE_RATE", default_value_t = 32 << 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub byte_rate: u32,

    /// Bytes each connection may send in bulk frames at once, before --byte-rate applies.
    #[arg(long, env = "GHOSTWIRE_BYTE_BURST", default_value_t = 4 << 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub byte_burst: u32,

    /// Most open client connections; more are answered with HTTP 503.
    #[arg(long, env = "GHOSTWIRE_MAX_CONNS", default_value_t = 10_000)]
    pub max_conns: usize,

    /// Most open connections from one client IP; more are answered with HTTP 429.
    #[arg(long, env = "GHOSTWIRE_MAX_CONNS_PER_IP", default_value_t = 64)]
    pub max_conns_per_ip: usize,

    /// Most rooms open at once; a JOIN that would open another gets ERROR 4006.
    #[arg(long, env = "GHOSTWIRE_MAX_ROOMS", default_value_t = 5_000)]
    pub max_rooms: usize,

    /// Time for the TCP/TLS/WebSocket handshake to complete before the socket is dropped.
    #[arg(long, env = "GHOSTWIRE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub handshake_timeout: Duration,

    /// Time for the first frame (JOIN) to arrive after the handshake (ERROR 4008).
    #[arg(long, env = "GHOSTWIRE_JOIN_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub join_timeout: Duration,

    /// Time a lone peer may wait in a room for the second one (ERROR 4010).
    #[arg(long, env = "GHOSTWIRE_WAIT_TIMEOUT", default_value = "10m", value_parser = parse_positive_duration)]
    pub wait_timeout: Duration,

    /// How long a room stays refused (ERROR 4012) once a paired client said BURN: its code was
    /// about to be tested, so every new JOIN would be one more guess at it. Shared through the
    /// upstream, so every relay of a cluster refuses it.
    #[arg(long, env = "GHOSTWIRE_BURN_TTL", default_value = "1h", value_parser = parse_positive_duration)]
    pub burn_ttl: Duration,

    /// Interval of WebSocket pings to each client.
    #[arg(long, env = "GHOSTWIRE_PING_INTERVAL", default_value = "20s", value_parser = parse_positive_duration)]
    pub ping_interval: Duration,

    /// A client silent for ping-interval + ping-timeout is dead and dropped (checked at each ping,
    /// so up to one interval later); so is one whose socket accepts no data for this long.
    #[arg(long, env = "GHOSTWIRE_PING_TIMEOUT", default_value = "20s", value_parser = parse_positive_duration)]
    pub ping_timeout: Duration,

    /// Frames queued for one client before it counts as a slow consumer (ERROR 4009, partner gets PEER_LEFT).
    /// Worst-case queued memory per client is this times --max-frame-bytes.
    #[arg(long, env = "GHOSTWIRE_PEER_QUEUE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub peer_queue: u32,

    /// Bytes read from a client socket per syscall, into a buffer borrowed for that read and freed
    /// once its bytes are taken: idle connections hold none. Larger reads take more frames per
    /// syscall; the README's performance section has the measured figures.
    #[arg(long, env = "GHOSTWIRE_READ_BUFFER", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(512..=1_048_576))]
    pub read_buffer: u32,

    /// On SIGTERM/SIGINT: time given to clients to take the close (1001) before the relay exits.
    /// (0: close at once without waiting.)
    #[arg(long, env = "GHOSTWIRE_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// On SIGTERM/SIGINT: close the clients over this long, a sixteenth of them at a time, not
    /// all at once, so that the clients resuming elsewhere do not reach the other replicas as
    /// one herd. Must be below --drain-timeout. (0: all at once.)
    #[arg(long, env = "GHOSTWIRE_DRAIN_SPREAD", default_value = "0s", value_parser = parse_duration)]
    pub drain_spread: Duration,

    /// Proxy or load balancer (CIDR, repeatable or comma-separated) whose X-Forwarded-For header or
    /// PROXY protocol line names the client IP. From any other address both are ignored.
    #[arg(long, env = "GHOSTWIRE_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxy: Vec<IpNet>,

    /// Expect a PROXY protocol (v1 or v2) header on connections from --trusted-proxy addresses.
    #[arg(long, env = "GHOSTWIRE_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// Include client IP addresses in logs (off: logs carry connection numbers only).
    #[arg(long, env = "GHOSTWIRE_LOG_IPS")]
    pub log_ips: bool,

    /// How rooms are shared between relays.
    #[arg(long, env = "GHOSTWIRE_UPSTREAM", value_enum, default_value_t = UpstreamKind::Local)]
    pub upstream: UpstreamKind,

    /// Listen backlog of the WebSocket listener (pending connections the kernel holds).
    #[arg(long, env = "GHOSTWIRE_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,

    /// Key for the room ids the relays share through a distributed upstream (HMAC-SHA256 of the
    /// room code), so the broker never sees a room code. The same on every replica; at least 16
    /// characters. Required by --upstream nats, kafka and mesh (where it also seals the gossip and
    /// authenticates the links). Prefer the environment variable to the flag.
    #[arg(long, env = "GHOSTWIRE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<Secret>,

    /// Read --cluster-secret from this file instead (a mounted Kubernetes Secret, say); one
    /// trailing newline is ignored.
    #[arg(long, env = "GHOSTWIRE_CLUSTER_SECRET_FILE", conflicts_with = "cluster_secret")]
    pub cluster_secret_file: Option<PathBuf>,

    /// Do not serve: ask the relay at --admin-listen (0.0.0.0 meaning this host) for /healthz and
    /// exit 0 if it answers 200, 1 otherwise. For container health checks in images without a
    /// shell or curl.
    #[arg(long)]
    pub probe: bool,

    /// Do not serve: check the whole configuration (these flags and GHOSTWIRE_* variables) as a
    /// start would, without binding or reaching a broker, print the effective configuration
    /// with secrets redacted, and exit 0, or 2 naming what is wrong.
    #[arg(long, conflicts_with = "probe")]
    pub check_config: bool,

    /// Log lines as human-readable text, or as JSON objects, one per line, for a log collector.
    #[arg(long, env = "GHOSTWIRE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The NATS upstream's settings.
    #[command(flatten)]
    pub nats: NatsConfig,

    /// The Kafka upstream's settings.
    #[command(flatten)]
    pub kafka: KafkaConfig,

    /// The mesh upstream's settings.
    #[command(flatten)]
    pub mesh: MeshConfig,
}

/// The mesh upstream's addresses, introducers and timing (used with `--upstream mesh`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Mesh upstream (--upstream mesh)")]
pub struct MeshConfig {
    /// Address of this relay's mesh port: relay-to-relay links on TCP and membership gossip on
    /// UDP, one port number for both. Port 0 picks a free one.
    #[arg(
        id = "mesh_listen",
        value_name = "ADDR",
        long = "mesh-listen",
        env = "GHOSTWIRE_MESH_LISTEN",
        default_value = "127.0.0.1:7946"
    )]
    pub listen: SocketAddr,

    /// Where other relays reach this relay's mesh port (`host:port`), when not --mesh-listen
    /// (behind NAT, or a pod's own IP when listening on 0.0.0.0).
    #[arg(id = "mesh_advertise", value_name = "HOST:PORT", long = "mesh-advertise", env = "GHOSTWIRE_MESH_ADVERTISE")]
    pub advertise: Option<String>,

    /// Introducers to announce this relay to, comma-separated `host:port` (any one that answers
    /// is enough; a Kubernetes headless Service name works).
    #[arg(
        id = "introducers",
        value_name = "HOST:PORT,...",
        long = "introducers",
        env = "GHOSTWIRE_MESH_INTRODUCERS",
        value_delimiter = ','
    )]
    pub introducers: Vec<String>,

    /// Read more introducers from this file: one `host:port` per line, or a JSON list of them
    /// (like the seed's introducers.json); `#` starts a comment.
    #[arg(
        id = "introducers_file",
        value_name = "FILE",
        long = "introducers-file",
        env = "GHOSTWIRE_MESH_INTRODUCERS_FILE"
    )]
    pub introducers_file: Option<PathBuf>,

    /// Run as an introducer: take part in the membership and witness the relays' leases (a relay
    /// admits new rooms only while a majority of the introducers answer it: run three), own no
    /// rooms, serve no clients (every JOIN is refused with 4007).
    #[arg(id = "mesh_introducer", long = "mesh-introducer", env = "GHOSTWIRE_MESH_INTRODUCER")]
    pub introducer: bool,

    /// Interval of the beats on every link between relays.
    #[arg(id = "mesh_heartbeat", value_name = "DURATION", long = "mesh-heartbeat", env = "GHOSTWIRE_MESH_HEARTBEAT", default_value = "15s", value_parser = parse_positive_duration)]
    pub heartbeat: Duration,

    /// A relay whose link is down or silent this long is given up: its rooms' partners get 4011
    /// and its rooms are free again. A link back within it loses nothing.
    #[arg(id = "mesh_peer_timeout", value_name = "DURATION", long = "mesh-peer-timeout", env = "GHOSTWIRE_MESH_PEER_TIMEOUT", default_value = "45s", value_parser = parse_positive_duration)]
    pub peer_timeout: Duration,

    /// SWIM probe period of the membership (a member is probed about this often; one that does
    /// not answer, directly or through others, is suspect, and down three periods later). Relays
    /// ping the introducers as often, for a lease of four periods: keep it the same everywhere.
    #[arg(id = "mesh_probe_period", value_name = "DURATION", long = "mesh-probe-period", env = "GHOSTWIRE_MESH_PROBE_PERIOD", default_value = "1s", value_parser = parse_positive_duration)]
    pub probe_period: Duration,
}

impl MeshConfig {
    /// The introducers from the flag and the file.
    ///
    /// # Errors
    /// A message naming the file when it cannot be read or parsed.
    pub fn introducer_list(&self) -> Result<Vec<String>, String> {
        let mut all: Vec<String> =
            self.introducers.iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        if let Some(path) = &self.introducers_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("--introducers-file {path:?}: {e}"))?;
            if text.trim_start().starts_with('[') {
                let list: Vec<String> = serde_json::from_str(&text).map_err(|e| {
                    format!("--introducers-file {path:?}: not a JSON list of \"host:port\" strings: {e}")
                })?;
                all.extend(list);
            } else {
                all.extend(
                    text.lines().map(|l| l.split('#').next().unwrap_or("").trim().to_owned()).filter(|l| !l.is_empty()),
                );
            }
        }
        for a in &all {
            if a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(format!("introducer {a:?}: use host:port"));
            }
        }
        Ok(all)
    }
}

/// The Kafka upstream's brokers, credentials, topic and timing (used with `--upstream kafka`).
/// The password can come from a file or the environment; `Debug` never shows it.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "Kafka upstream (--upstream kafka)")]
pub struct KafkaConfig {
    /// Kafka bootstrap brokers, comma-separated `host:port`. Kafka is the operator's (or a
    /// managed service): the relay never starts or embeds it.
    #[arg(
        id = "kafka_brokers",
        value_name = "HOST:PORT,...",
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// Speak TLS to the brokers (implied by --kafka-ca). Without --kafka-ca the system's roots
    /// are used.
    #[arg(id = "kafka_tls", long = "kafka-tls", env = "KAFKA_TLS")]
    pub tls: bool,

    /// PEM file of the CA that signed the brokers' certificates (a managed service's CA file).
    #[arg(id = "kafka_ca", value_name = "FILE", long = "kafka-ca", env = "KAFKA_CA")]
    pub ca: Option<PathBuf>,

    /// SASL mechanism to authenticate with (needs --kafka-user and a password).
    #[arg(
        id = "kafka_sasl_mechanism",
        value_name = "MECHANISM",
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        value_enum,
        requires = "kafka_user"
    )]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name.
    #[arg(
        id = "kafka_user",
        value_name = "NAME",
        long = "kafka-user",
        env = "KAFKA_USER",
        requires = "kafka_sasl_mechanism"
    )]
    pub user: Option<String>,

    /// SASL password. Prefer the environment variable or --kafka-password-file to the flag.
    #[arg(
        id = "kafka_password",
        value_name = "PASSWORD",
        long = "kafka-password",
        env = "KAFKA_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<Secret>,

    /// Read the SASL password from this file (one trailing newline is ignored).
    #[arg(
        id = "kafka_password_file",
        value_name = "FILE",
        long = "kafka-password-file",
        env = "KAFKA_PASSWORD_FILE",
        conflicts_with = "kafka_password"
    )]
    pub password_file: Option<PathBuf>,

    /// Prefix of the topic (`<prefix>.rooms`), so deployments can share one cluster.
    #[arg(id = "kafka_topic_prefix", value_name = "PREFIX", long = "kafka-topic-prefix", env = "GHOSTWIRE_KAFKA_TOPIC_PREFIX", default_value = "ghostwire", value_parser = parse_topic_prefix)]
    pub topic_prefix: String,

    /// Partitions of the rooms topic when the relay creates it (a managed free tier allows 2).
    #[arg(id = "kafka_partitions", value_name = "N", long = "kafka-partitions", env = "GHOSTWIRE_KAFKA_PARTITIONS", default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..=64))]
    pub partitions: i32,

    /// Replication factor when the relay creates the topic (-1: the cluster's default).
    #[arg(id = "kafka_replication", value_name = "N", long = "kafka-replication", env = "GHOSTWIRE_KAFKA_REPLICATION", default_value_t = -1, value_parser = clap::value_parser!(i32).range(-1..=16))]
    pub replication: i32,

    /// How long the brokers keep records (`retention.ms` of a topic the relay creates). A relay
    /// starting later rebuilds the rooms from the newest snapshot within it.
    #[arg(id = "kafka_retention", value_name = "DURATION", long = "kafka-retention", env = "GHOSTWIRE_KAFKA_RETENTION", default_value = "1h", value_parser = parse_positive_duration)]
    pub retention: Duration,

    /// Every relay writes a snapshot of each partition's rooms this often, from which a relay
    /// that starts later rebuilds them. Keep it well under --kafka-retention.
    #[arg(id = "kafka_snapshot_every", value_name = "DURATION", long = "kafka-snapshot-every", env = "GHOSTWIRE_KAFKA_SNAPSHOT_EVERY", default_value = "5m", value_parser = parse_positive_duration)]
    pub snapshot_every: Duration,

    /// Every relay writes a heartbeat record to every partition this often.
    #[arg(id = "kafka_heartbeat", value_name = "DURATION", long = "kafka-heartbeat", env = "GHOSTWIRE_KAFKA_HEARTBEAT", default_value = "1s", value_parser = parse_positive_duration)]
    pub heartbeat: Duration,

    /// A relay with no record in a partition for this long (by the log's own timestamps) has
    /// lapsed: its seats there are gone and their partners get 4011. Also how long a relay that
    /// cannot read its own heartbeats back keeps its rooms before ending them with 4011.
    #[arg(id = "kafka_peer_timeout", value_name = "DURATION", long = "kafka-peer-timeout", env = "GHOSTWIRE_KAFKA_PEER_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub peer_timeout: Duration,
}

/// SASL mechanisms a managed Kafka offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    /// PLAIN (only over TLS on an untrusted network).
    Plain,
    /// SCRAM-SHA-256.
    #[value(name = "scram-sha-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[value(name = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka's `sasl.mechanism` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl KafkaConfig {
    /// The SASL password, from the flag, the environment or the file.
    ///
    /// # Errors
    /// A message naming the file's flag when it cannot be read.
    pub fn password(&self) -> Result<Option<Secret>, String> {
        Secret::given(self.password.as_ref(), self.password_file.as_deref(), "--kafka-password-file")
    }

    /// The rooms topic.
    pub fn topic(&self) -> String {
        format!("{}.rooms", self.topic_prefix)
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("password_file", &self.password_file)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("retention", &self.retention)
            .field("snapshot_every", &self.snapshot_every)
            .field("heartbeat", &self.heartbeat)
            .field("peer_timeout", &self.peer_timeout)
            .finish()
    }
}

/// A Kafka topic name part: letters, digits, `.`, `-` and `_`.
fn parse_topic_prefix(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: use 1-200 letters, digits, '.', '-' or '_'"))
    }
}

/// The NATS upstream's connection and timing (used with `--upstream nats`). Every credential can
/// be given as a file (`--nats-…-file`, for mounted secrets); `Debug` shows none of them, nor
/// the `user:password@` of a URL.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "NATS upstream (--upstream nats)")]
#[command(group(clap::ArgGroup::new("nats_password").args(["password", "password_file"])))]
pub struct NatsConfig {
    /// NATS server(s) to connect to, comma-separated (nats:// or tls://). NATS is the operator's:
    /// the relay never starts or embeds it.
    #[arg(long = "nats-url", env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub url: String,

    /// Authenticate to NATS with this token.
    #[arg(long = "nats-token", env = "NATS_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,

    /// Read --nats-token from this file.
    #[arg(long = "nats-token-file", env = "NATS_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// Authenticate to NATS as this user (with --nats-password or --nats-password-file).
    #[arg(long = "nats-user", env = "NATS_USER", requires = "nats_password")]
    pub user: Option<String>,

    /// Password for --nats-user.
    #[arg(long = "nats-password", env = "NATS_PASSWORD", hide_env_values = true, requires = "user")]
    pub password: Option<Secret>,

    /// Read --nats-password from this file.
    #[arg(long = "nats-password-file", env = "NATS_PASSWORD_FILE", conflicts_with = "password", requires = "user")]
    pub password_file: Option<PathBuf>,

    /// Authenticate to NATS with this nkey seed (`SU...`).
    #[arg(long = "nats-nkey", env = "NATS_NKEY", hide_env_values = true)]
    pub nkey: Option<Secret>,

    /// Read --nats-nkey from this file.
    #[arg(long = "nats-nkey-file", env = "NATS_NKEY_FILE", conflicts_with = "nkey")]
    pub nkey_file: Option<PathBuf>,

    /// Authenticate to NATS with this credentials file (JWT and nkey seed, `.creds`).
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,

    /// Trust this PEM CA for the NATS server's certificate, and require TLS.
    #[arg(long = "nats-ca", env = "NATS_CA")]
    pub ca: Option<PathBuf>,

    /// Prefix of every subject and of the key-value bucket the relays use; lets several
    /// deployments share one NATS.
    #[arg(long = "nats-prefix", env = "GHOSTWIRE_NATS_PREFIX", default_value = "ghostwire", value_parser = parse_nats_token)]
    pub prefix: String,

    /// Interval of each relay's heartbeat on NATS.
    #[arg(long = "nats-heartbeat", env = "GHOSTWIRE_NATS_HEARTBEAT", default_value = "1s", value_parser = parse_positive_duration)]
    pub heartbeat: Duration,

    /// A relay not heard for this long is dead: its rooms' partners get ERROR 4011, peer lost
    /// (within this plus one heartbeat). Also what ends cross-relay rooms when this relay loses
    /// NATS.
    #[arg(long = "nats-peer-timeout", env = "GHOSTWIRE_NATS_PEER_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub peer_timeout: Duration,

    /// Lifetime of a room slot in the key-value bucket (in memory); each live seat renews its
    /// slot every third of it, so a dead relay's slots are freed within this time at most.
    #[arg(long = "nats-slot-ttl", env = "GHOSTWIRE_NATS_SLOT_TTL", default_value = "15s", value_parser = parse_positive_duration)]
    pub slot_ttl: Duration,
}

impl NatsConfig {
    /// The token, from the flag or its file.
    ///
    /// # Errors
    /// A message naming the file's flag when it cannot be read.
    pub fn token(&self) -> Result<Option<Secret>, String> {
        Secret::given(self.token.as_ref(), self.token_file.as_deref(), "--nats-token-file")
    }

    /// The password, from the flag or its file.
    ///
    /// # Errors
    /// As [`token`](Self::token).
    pub fn password(&self) -> Result<Option<Secret>, String> {
        Secret::given(self.password.as_ref(), self.password_file.as_deref(), "--nats-password-file")
    }

    /// The nkey seed, from the flag or its file.
    ///
    /// # Errors
    /// As [`token`](Self::token).
    pub fn nkey(&self) -> Result<Option<Secret>, String> {
        Secret::given(self.nkey.as_ref(), self.nkey_file.as_deref(), "--nats-nkey-file")
    }
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &shown_url(&self.url))
            .field("token", &self.token)
            .field("token_file", &self.token_file)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("password_file", &self.password_file)
            .field("nkey", &self.nkey)
            .field("nkey_file", &self.nkey_file)
            .field("creds", &self.creds)
            .field("ca", &self.ca)
            .field("prefix", &self.prefix)
            .field("heartbeat", &self.heartbeat)
            .field("peer_timeout", &self.peer_timeout)
            .field("slot_ttl", &self.slot_ttl)
            .finish()
    }
}

/// NATS URLs as logs, `/readyz` and `Debug` show them: any `user:password@` is left out.
pub fn shown_url(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}://…@{}", &url[..scheme], &url[at + 1..]),
            (None, Some(at)) => format!("…@{}", &url[at + 1..]),
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A secret from the command line, the environment or a file: held in a `secrecy` box (wiped on
/// drop), never printed by `Debug`.
#[derive(Clone)]
pub struct Secret(secrecy::SecretString);

impl Secret {
    /// Reads a secret from `path`, without its trailing newline.
    ///
    /// # Errors
    /// The I/O error, for the caller to report with the flag's name.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Secret> {
        let mut text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
        let len = text.trim_end_matches(['\n', '\r']).len();
        text.truncate(len);
        Ok(Secret(secrecy::SecretString::from(text.as_str())))
    }

    /// The value given directly, else the one in `file` (whose flag is `file_flag`).
    fn given(
        value: Option<&Secret>,
        file: Option<&std::path::Path>,
        file_flag: &str,
    ) -> Result<Option<Secret>, String> {
        match (value, file) {
            (Some(v), _) => Ok(Some(v.clone())),
            (None, Some(path)) => Secret::from_file(path).map(Some).map_err(|e| format!("{file_flag} {path:?}: {e}")),
            (None, None) => Ok(None),
        }
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(secrecy::SecretString::from(s)))
    }
}

/// A NATS subject token: letters, digits, `-` and `_`.
fn parse_nats_token(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: use 1-64 letters, digits, '-' or '_'"))
    }
}

/// The end of `--help`: logging and exit codes.
const AFTER_HELP: &str = "\
Logging: GHOSTWIRE_LOG sets the verbosity (info by default; debug, trace, or a tracing filter such \
as ghostwire_relay=debug; a word that is not a level, or a filter that does not parse, exits 2). Logs go to stderr and never hold room codes, payloads, keys or \
credentials; client IPs only with --log-ips.

Exit codes: 0 stopped by SIGTERM or SIGINT after draining; 1 could not start (a listen address in \
use or not local, unusable TLS files, no runtime); 2 a bad flag or configuration (clap names the \
flag; also a missing or short cluster secret, an unreadable secret file, contradictory flags, \
an upstream this build does not have).";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per event (time, level, target, fields), for log collectors.
    Json,
}

/// The upstream implementations this build has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpstreamKind {
    /// Rooms live in this process only (one relay; needs nothing else).
    Local,
    /// Rooms are shared by every relay on one NATS server or cluster (JetStream, memory storage).
    Nats,
    /// Rooms are shared by every relay on one Kafka cluster (one topic, the log as sequencer).
    Kafka,
    /// Relays link to each other directly, found through introducers (no broker).
    Mesh,
}

impl UpstreamKind {
    /// The name as `--upstream` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Local => "local",
            UpstreamKind::Nats => "nats",
            UpstreamKind::Kafka => "kafka",
            UpstreamKind::Mesh => "mesh",
        }
    }
}

impl Config {
    /// The defaults, on loopback port 0 for both listeners, as tests want them.
    pub fn for_tests() -> Config {
        let mut c = Config::parse_from(["ghostwire-relay"]);
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c
    }

    /// Every rule that one flag's parser cannot see alone: values that parse but cannot work
    /// together, or cannot work at all. Each message names the flags involved.
    ///
    /// # Errors
    /// Every violation, one per line.
    pub fn validate(&self) -> Result<(), String> {
        /// A peer is given up only after this many beats were missed.
        const BEATS: u32 = 3;
        let mut wrong = Vec::new();
        let mut beats = |upstream: UpstreamKind, name: &str, heartbeat: Duration, timeout: Duration| {
            if self.upstream == upstream && timeout < heartbeat * BEATS {
                wrong.push(format!(
                    "--{name}-peer-timeout ({}) must be at least {BEATS} times --{name}-heartbeat ({}): \
                     a live relay would be given up between two of its beats",
                    humantime::format_duration(timeout),
                    humantime::format_duration(heartbeat)
                ));
            }
        };
        beats(UpstreamKind::Nats, "nats", self.nats.heartbeat, self.nats.peer_timeout);
        beats(UpstreamKind::Kafka, "kafka", self.kafka.heartbeat, self.kafka.peer_timeout);
        beats(UpstreamKind::Mesh, "mesh", self.mesh.heartbeat, self.mesh.peer_timeout);
        if self.upstream == UpstreamKind::Kafka && self.kafka.retention < self.kafka.snapshot_every * 2 {
            wrong.push(format!(
                "--kafka-retention ({}) must be at least twice --kafka-snapshot-every ({}): a relay that \
                 starts late needs a snapshot still in the log",
                humantime::format_duration(self.kafka.retention),
                humantime::format_duration(self.kafka.snapshot_every)
            ));
        }
        if !self.drain_spread.is_zero() && self.drain_spread >= self.drain_timeout {
            wrong.push(format!(
                "--drain-spread ({}) must be below --drain-timeout ({}): the last clients would be \
                 dropped before they are told to resume elsewhere",
                humantime::format_duration(self.drain_spread),
                humantime::format_duration(self.drain_timeout)
            ));
        }
        if self.max_frame_bytes < ghostwire_shared::MIN_MAX_FRAME_BYTES {
            wrong.push(format!(
                "--max-frame-bytes ({}) must be at least {}: clients send frames of up to about 5.6 KB",
                self.max_frame_bytes,
                ghostwire_shared::MIN_MAX_FRAME_BYTES
            ));
        }
        for (flag, value) in [
            ("--max-conns", self.max_conns),
            ("--max-conns-per-ip", self.max_conns_per_ip),
            ("--max-rooms", self.max_rooms),
        ] {
            if value == 0 {
                wrong.push(format!("{flag} must be at least 1: with 0 the relay would refuse everyone"));
            }
        }
        if self.upstream == UpstreamKind::Mesh
            && !self.mesh.introducer
            && self.mesh.listen.ip().is_unspecified()
            && self.mesh.advertise.is_none()
        {
            wrong.push(format!(
                "--mesh-listen {} listens on every address, so the other relays need --mesh-advertise \
                 HOST:PORT to know which one reaches this relay",
                self.mesh.listen
            ));
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("\n"))
        }
    }

    /// Whether `ip` is one of the configured trusted proxies.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxy.iter().any(|net| net.contains(&ip))
    }
}

/// The longest duration any flag takes: beyond it, deadlines would overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Like [`parse_duration`], for durations where zero has no meaning (an interval, a timeout).
///
/// # Errors
/// A message for zero, as well as for anything [`parse_duration`] refuses.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// Parses `10s`, `500ms`, `5m` or a bare number of seconds (`1.5`), at most a year.
///
/// # Errors
/// A message saying what is wrong with `s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_any_duration(s)?;
    if d > MAX_DURATION {
        return Err("must be at most a year (365d)".into());
    }
    Ok(d)
}

fn parse_any_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use e.g. 500ms, 10s, 5m)"))
}

/// Parses a CIDR (`10.0.0.0/8`) or a single address (`10.1.2.3`, taken as /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    /// No Debug of the configuration shows a credential, URL credentials included.
    #[test]
    fn debug_shows_no_secret() {
        let config = Config::parse_from([
            "ghostwire-relay",
            "--nats-url",
            "nats://relay:hunter2-in-url@nats:4222,tls://tok3n-in-url@other:4222",
            "--nats-token",
            "the-token-value",
            "--nats-nkey",
            "SUTHENKEYSEEDVALUE",
            "--cluster-secret",
            "the-cluster-secret-value",
        ]);
        let shown = format!("{config:?}");
        for secret in
            ["hunter2-in-url", "tok3n-in-url", "the-token-value", "SUTHENKEYSEEDVALUE", "the-cluster-secret-value"]
        {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("nats://…@nats:4222"), "{shown}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_and_the_test_settings_are_valid_and_each_rule_names_its_flags() {
        assert_eq!(Config::for_tests().validate(), Ok(()));
        let mut c = Config::for_tests();
        c.upstream = UpstreamKind::Mesh;
        assert_eq!(c.validate(), Ok(()), "the mesh defaults (15 s beats, 45 s timeout)");
        c.mesh.peer_timeout = Duration::from_secs(44);
        let why = c.validate().err().unwrap_or_default();
        assert!(why.contains("--mesh-peer-timeout (44s)") && why.contains("--mesh-heartbeat (15s)"), "{why}");
        let mut c = Config::for_tests();
        c.upstream = UpstreamKind::Kafka;
        c.kafka.snapshot_every = Duration::from_secs(31 * 60);
        assert!(c.validate().err().unwrap_or_default().contains("--kafka-retention (1h)"));
        let mut c = Config::for_tests();
        c.max_frame_bytes = ghostwire_shared::MIN_MAX_FRAME_BYTES - 1;
        c.max_rooms = 0;
        let why = c.validate().err().unwrap_or_default();
        assert_eq!(why.lines().count(), 2, "every violation is told at once: {why}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cidrs() {
        assert!(parse_cidr("10.0.0.0/8").is_ok_and(|n| n.contains(&IpAddr::from([10, 9, 8, 7]))));
        assert!(parse_cidr("::1").is_ok_and(|n| n.prefix_len() == 128));
        assert!(parse_cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn bad_flag_is_named() {
        let err = Config::try_parse_from(["ghostwire-relay", "--frame-rate", "fast"]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("--frame-rate")));
    }
}

#[cfg(test)]
mod mesh_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The introducers of `--introducers a,b` and a file holding `text` (removed after).
    fn list(text: &str) -> Result<Vec<String>, String> {
        let path = std::env::temp_dir().join(format!("ghostwire-introducers-{}-{}", std::process::id(), text.len()));
        std::fs::write(&path, text).unwrap();
        let c = Config::parse_from(["ghostwire-relay", "--introducers", "a.example:7946,b.example:7946"]);
        let got = MeshConfig { introducers_file: Some(path.clone()), ..c.mesh }.introducer_list();
        std::fs::remove_file(&path).unwrap();
        got
    }

    /// Introducers come from the flag and from a file of lines (comments allowed) or a JSON list.
    #[test]
    fn introducers_from_the_flag_and_a_file() {
        assert_eq!(
            list("# seeds\nc.example:7946\n\n  d.example:7946  # the second\n").unwrap(),
            ["a.example:7946", "b.example:7946", "c.example:7946", "d.example:7946"]
        );
        assert_eq!(list(r#"["10.0.0.5:7946", "10.0.0.6:7946"]"#).unwrap()[2..], ["10.0.0.5:7946", "10.0.0.6:7946"]);
        assert!(list("no-port-here\n").unwrap_err().contains("no-port-here"));
        assert!(list("[\"unterminated\n").unwrap_err().contains("--introducers-file"));
        let c = Config::parse_from(["ghostwire-relay", "--introducers-file", "/nonexistent/introducers"]);
        assert!(c.mesh.introducer_list().unwrap_err().contains("/nonexistent/introducers"));
    }
}
