//! The relay's metrics, in one Prometheus registry per relay, served as text on the admin listener.
//!
//! Built on the `prometheus` crate (its counters are one relaxed atomic add, its process
//! collector reads CPU, memory and open descriptors from `/proc`). Labels are fixed sets (error
//! codes, refusal and TLS-failure reasons, the upstream's name, the build): nothing per room or
//! per client exists here, so a scrape can never reveal a room code or an address. Hot-path
//! counters (frames, bytes) are added once per write batch, not once per frame, and every
//! labelled counter is resolved once at start, so counting never hashes a label.

use crate::config::{Config, UpstreamKind};
use ghostwire_shared::ErrorCode;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Why a connection was refused or failed before its WebSocket opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client's address already holds `--max-conns-per-ip` connections (429).
    PerIpLimit,
    /// The relay holds `--max-conns` connections (503).
    Capacity,
    /// A trusted proxy sent no PROXY header or a malformed one.
    ProxyHeader,
    /// The TLS handshake failed (its reason is in `tls_handshake_failures_total`).
    Tls,
    /// The HTTP upgrade was refused or failed: another path, not a WebSocket request, a client gone.
    Upgrade,
    /// `--handshake-timeout` passed before the WebSocket opened.
    Timeout,
}

impl Refusal {
    /// Every reason, in the order of the metric's series.
    pub const ALL: [Refusal; 6] = [
        Refusal::PerIpLimit,
        Refusal::Capacity,
        Refusal::ProxyHeader,
        Refusal::Tls,
        Refusal::Upgrade,
        Refusal::Timeout,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerIpLimit => "per_ip_limit",
            Refusal::Capacity => "capacity",
            Refusal::ProxyHeader => "proxy_header",
            Refusal::Tls => "tls",
            Refusal::Upgrade => "upgrade",
            Refusal::Timeout => "timeout",
        }
    }
}

/// Why a TLS handshake failed, as far as the relay can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The client sent an alert about our certificate: it does not trust it (unknown CA, bad or
    /// expired certificate, a name mismatch). The one an operator must act on.
    CertificateRejected,
    /// No protocol version or cipher suite in common, or another incompatibility.
    Incompatible,
    /// The bytes were not TLS (plain HTTP to a TLS port, a scanner).
    NotTls,
    /// The client sent another alert, or the handshake broke in a way rustls names otherwise.
    Other,
    /// The connection closed or failed mid-handshake.
    Closed,
}

impl TlsFailure {
    /// Every reason, in the order of the metric's series.
    pub const ALL: [TlsFailure; 5] = [
        TlsFailure::CertificateRejected,
        TlsFailure::Incompatible,
        TlsFailure::NotTls,
        TlsFailure::Other,
        TlsFailure::Closed,
    ];

    /// Classifies the error a TLS accept returned.
    pub fn of(error: &std::io::Error) -> TlsFailure {
        use rustls::AlertDescription as A;
        let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
            return TlsFailure::Closed;
        };
        match tls {
            rustls::Error::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied,
            ) => TlsFailure::CertificateRejected,
            rustls::Error::PeerIncompatible(_) | rustls::Error::AlertReceived(A::ProtocolVersion) => {
                TlsFailure::Incompatible
            }
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => TlsFailure::NotTls,
            _ => TlsFailure::Other,
        }
    }

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::CertificateRejected => "certificate_rejected",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::NotTls => "not_tls",
            TlsFailure::Other => "other",
            TlsFailure::Closed => "closed",
        }
    }
}

/// The relay's metrics.
pub struct Metrics {
    registry: Registry,
    /// WebSocket connections accepted (handshake completed).
    pub connections_total: IntCounter,
    /// WebSocket connections open now.
    pub connections_open: IntGauge,
    /// Rooms that got their second peer.
    pub rooms_paired_total: IntCounter,
    /// Rooms burnt at a client's word (BURN).
    pub rooms_burnt_total: IntCounter,
    /// How long the upstream took to decide each JOIN (waiting, paired or refused), in seconds:
    /// the room service's latency, an SLO an operator can set.
    pub join_seconds: prometheus::Histogram,
    /// SIGNAL frames delivered to a client.
    pub frames_forwarded: IntCounter,
    /// Bytes of SIGNAL frames delivered to a client.
    pub bytes_forwarded: IntCounter,
    /// Connections dropped because the client stopped answering pings.
    pub ping_timeouts: IntCounter,
    /// Connections closed with 1001 because the relay shut down (not an error).
    pub shutdown_closes: IntCounter,
    /// The distributed upstream's counters (zero with the in-process upstream).
    pub upstream: UpstreamMetrics,
    refused: Vec<(Refusal, IntCounter)>,
    tls_failures: Vec<(TlsFailure, IntCounter)>,
    /// Whether a TLS failure of each reason (in [`TlsFailure::ALL`]'s order) has been logged.
    tls_logged: [AtomicBool; TlsFailure::ALL.len()],
    errors: Vec<(ErrorCode, IntCounter)>,
    rooms_open: IntGauge,
    upstream_connected: IntGauge,
}

/// Counters of a distributed upstream: what crossed the broker and what went wrong.
pub struct UpstreamMetrics {
    /// Frames received from the broker for this relay's clients.
    pub frames_in: IntCounter,
    /// Frames published to the broker for partners.
    pub frames_out: IntCounter,
    /// Publishes (frames, departures, heartbeats) the client library refused.
    pub publish_errors: IntCounter,
    /// Reconnections to the broker after a lost connection.
    pub reconnects: IntCounter,
    /// Joins refused because both slots of the room were taken (4002), decided by the broker.
    pub slot_conflicts: IntCounter,
    /// Connections ended with 4011 (peer lost) by the upstream, by cause.
    pub peers_lost: PeersLost,
    /// Frames sent again because they were not acknowledged (after a reconnect, a reported gap,
    /// or a stall).
    pub retransmits: IntCounter,
    /// How long frames took from this relay to the partner's client and the acknowledgement
    /// back: per acknowledgement, the oldest frame it covers (a round trip through the broker or
    /// link, the partner relay's hand-over and its acknowledgement delay).
    pub handover_seconds: prometheus::Histogram,
    /// Messages dropped because they did not come from the seat they claim (a stale or confused relay).
    pub foreign_messages: IntCounter,
    /// Introducers whose answer gives this relay its lease now (mesh): it admits new rooms while
    /// they are a majority of the introducers.
    pub lease_witnesses: IntGauge,
    /// Relays that left the roster within the grace: the rooms they owned admit no new seat
    /// until their seats' records can have reached the new owners (mesh).
    pub rooms_moving: IntGauge,
    /// Joins this relay refused as the room's owner: by its roster another relay owns the room,
    /// or it was not ready (no lease, or not linked to every relay) (mesh).
    pub joins_refused: IntCounter,
    /// Broker messages, records and slot values dropped because their tag did not verify under
    /// the cluster secret: forged, replayed elsewhere, or from a relay with another secret
    /// (NATS, Kafka).
    pub forged: IntCounter,
    /// Records behind the end of the log, summed over partitions, as of the last read (Kafka).
    pub consumer_lag: IntGauge,
    /// Times a partition had to be read from a new position: its offset was gone (retention or a
    /// broker that lost its log) or its snapshot was reloaded (Kafka).
    pub reassignments: IntCounter,
    /// Links to other relays up now (mesh).
    pub links_up: IntGauge,
    /// Relays this one counts as the mesh: alive to the membership, listed by a lease answer, or linked.
    pub roster_size: IntGauge,
    /// Links that went down, and members the membership declared down (mesh).
    pub suspicions: IntCounter,
    /// Relays given up: their partners got 4011 (mesh).
    pub peer_deaths: IntCounter,
    /// Link handshakes refused because the other side does not hold the cluster secret (mesh).
    pub link_auth_failures: IntCounter,
    /// Inbound link connections closed unanswered: the handshake permits, shared or for their
    /// source address, were all taken (mesh).
    pub handshakes_refused: IntCounter,
    /// Gossip datagrams dropped because they did not open under the cluster's key (mesh).
    pub gossip_refused: IntCounter,
    /// Seats held across the mesh, as each relay on the roster last published its load (mesh).
    pub mesh_seats: IntGauge,
}

/// Why an upstream ended a connection with 4011 (peer lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostCause {
    /// The partner's relay went silent (heartbeats, the log, the links) or was given up.
    PartnerRelay,
    /// This relay lost its broker, its log or every other relay.
    ThisRelay,
    /// Frames could not be delivered: missing, refused by the broker, or not text.
    Delivery,
}

impl LostCause {
    /// Every cause, for the label's series.
    pub const ALL: [LostCause; 3] = [LostCause::PartnerRelay, LostCause::ThisRelay, LostCause::Delivery];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            LostCause::PartnerRelay => "partner_relay",
            LostCause::ThisRelay => "this_relay",
            LostCause::Delivery => "delivery",
        }
    }
}

/// `upstream_peers_lost_total`, one series per [`LostCause`].
pub struct PeersLost(Vec<(LostCause, IntCounter)>);

impl PeersLost {
    /// Counts one connection ended with 4011 for `cause`.
    pub fn inc(&self, cause: LostCause) {
        count(&self.0, cause);
    }
}

/// Registers metrics in one registry; a name registered twice is a programming error caught by
/// the unit test below, so registration failures are not surfaced at run time. A builder made
/// with `register` false makes the metrics without exporting them: the series of an upstream
/// this relay does not run would only say zero, and mislead.
struct Builder<'a>(&'a Registry, bool);

/// The distributed upstreams, NATS and Kafka (the brokers), Kafka, the mesh.
const DISTRIBUTED: &[UpstreamKind] = &[UpstreamKind::Nats, UpstreamKind::Kafka, UpstreamKind::Mesh];
const BROKERS: &[UpstreamKind] = &[UpstreamKind::Nats, UpstreamKind::Kafka];
const KAFKA: &[UpstreamKind] = &[UpstreamKind::Kafka];
const MESH: &[UpstreamKind] = &[UpstreamKind::Mesh];

impl<'a> Builder<'a> {
    /// A builder whose metrics are exported only when `running` is one of `kinds`.
    fn only(&self, running: UpstreamKind, kinds: &[UpstreamKind]) -> Builder<'a> {
        Builder(self.0, kinds.contains(&running))
    }

    /// Registers `made` (a metric just built from a constant name, so never an error).
    fn add<M: prometheus::core::Collector + Clone + 'static>(&self, name: &str, made: prometheus::Result<M>) -> M {
        let metric = made.unwrap_or_else(|_| unreachable!("valid metric name {name}"));
        if self.1 {
            let _ = self.0.register(Box::new(metric.clone()));
        }
        metric
    }

    fn opts(name: &str, help: &str) -> Opts {
        Opts::new(name, help).namespace("ghostwire")
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(name, IntCounter::with_opts(Self::opts(name, help)))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> prometheus::Histogram {
        let opts = prometheus::HistogramOpts::new(name, help).namespace("ghostwire").buckets(buckets.to_vec());
        self.add(name, prometheus::Histogram::with_opts(opts))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(name, IntGauge::with_opts(Self::opts(name, help)))
    }

    /// A gauge set once, to `value`.
    fn constant(&self, name: &str, help: &str, value: usize) {
        self.gauge(name, help).set(i64::try_from(value).unwrap_or(i64::MAX));
    }

    /// A counter with labels: one series per key, labelled by `labels(key)`, each resolved now.
    fn counters<K: Copy, const L: usize>(
        &self,
        name: &str,
        help: &str,
        label_names: [&str; L],
        keys: impl IntoIterator<Item = K>,
        labels: impl Fn(K) -> [String; L],
    ) -> Vec<(K, IntCounter)> {
        let vec = self.add(name, IntCounterVec::new(Self::opts(name, help), &label_names));
        keys.into_iter()
            .map(|key| {
                let values = labels(key);
                (key, vec.with_label_values(&values.each_ref().map(String::as_str)))
            })
            .collect()
    }

    /// A gauge with one fixed set of labels (an info metric, or one set at scrape time).
    fn labelled_gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> IntGauge {
        let names: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
        let values: Vec<&str> = labels.iter().map(|(_, v)| *v).collect();
        self.add(name, IntGaugeVec::new(Self::opts(name, help), &names)).with_label_values(&values)
    }
}

/// The upstreams compiled into this build, comma-separated.
pub fn compiled_upstreams() -> String {
    let optional =
        [("nats", cfg!(feature = "nats")), ("kafka", cfg!(feature = "kafka")), ("mesh", cfg!(feature = "mesh"))];
    let built = optional.iter().filter(|(_, on)| *on).map(|(name, _)| *name);
    std::iter::once("local").chain(built).collect::<Vec<_>>().join(",")
}

impl Metrics {
    /// The metrics of a relay configured by `config`: its limits and build are set now.
    pub fn new(config: &Config) -> Metrics {
        let registry = Registry::new();
        let b = Builder(&registry, true);
        let up = config.upstream;
        let (all, brokers, kafka, mesh) =
            (b.only(up, DISTRIBUTED), b.only(up, BROKERS), b.only(up, KAFKA), b.only(up, MESH));
        let refused = b.counters(
            "handshakes_refused_total",
            "Connections refused or failed before the WebSocket opened, by reason.",
            ["reason"],
            Refusal::ALL,
            |r| [r.as_str().to_owned()],
        );
        let tls_failures = b.counters(
            "tls_handshake_failures_total",
            "TLS handshakes that failed, by reason (certificate_rejected: clients do not trust the certificate served).",
            ["reason"],
            TlsFailure::ALL,
            |r| [r.as_str().to_owned()],
        );
        let errors = b.counters(
            "errors_total",
            "Connections ended with an ERROR, by code (shutdown closes are counted in shutdown_closes_total).",
            ["code", "reason"],
            ErrorCode::ALL.into_iter().filter(|c| *c != ErrorCode::GoingAway),
            |c| [c.as_u16().to_string(), c.name().to_owned()],
        );
        b.constant(
            "max_connections",
            "--max-conns: WebSocket connections this relay accepts at once.",
            config.max_conns,
        );
        b.constant(
            "max_connections_per_ip",
            "--max-conns-per-ip: connections one client address may hold, half-open ones included.",
            config.max_conns_per_ip,
        );
        b.constant("max_rooms", "--max-rooms: rooms in which this relay holds a seat at once.", config.max_rooms);
        b.constant("max_frame_bytes", "--max-frame-bytes: the largest frame accepted.", config.max_frame_bytes);
        b.labelled_gauge(
            "build_info",
            "The relay's build: version, commit and the upstreams compiled in.",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", option_env!("GHOSTWIRE_COMMIT").unwrap_or("unknown")),
                ("upstreams", compiled_upstreams().as_str()),
            ],
        )
        .set(1);
        let upstream_connected = b.labelled_gauge(
            "upstream_connected",
            "1 while the upstream can take joins (the broker is connected), else 0.",
            &[("upstream", config.upstream.as_str())],
        );
        #[cfg(target_os = "linux")]
        let _ = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        Metrics {
            connections_total: b.counter("connections_total", "WebSocket connections accepted."),
            connections_open: b.gauge("connections_open", "WebSocket connections open now."),
            rooms_paired_total: b.counter("rooms_paired_total", "Rooms that got their second peer."),
            rooms_burnt_total: b.counter(
                "rooms_burnt_total",
                "Rooms burnt because a paired client was about to test its code (later joins get 4012).",
            ),
            join_seconds: b.histogram(
                "join_seconds",
                "Time the upstream took to decide a JOIN (waiting, paired or refused), in seconds.",
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            frames_forwarded: b.counter("frames_forwarded_total", "SIGNAL frames delivered to clients."),
            bytes_forwarded: b.counter("bytes_forwarded_total", "Bytes of SIGNAL frames delivered to clients."),
            ping_timeouts: b.counter("ping_timeouts_total", "Connections dropped for not answering pings."),
            shutdown_closes: b.counter("shutdown_closes_total", "Connections closed with 1001 because the relay shut down."),
            upstream: UpstreamMetrics {
                frames_in: all.counter("upstream_frames_in_total", "Frames received from the broker."),
                frames_out: all.counter("upstream_frames_out_total", "Frames published to the broker."),
                publish_errors: brokers.counter("upstream_publish_errors_total", "Publishes to the broker that failed."),
                reconnects: all.counter("upstream_reconnects_total", "Reconnections to the broker."),
                slot_conflicts: all.counter(
                    "upstream_slot_conflicts_total",
                    "Joins refused by the broker because the room was full.",
                ),
                peers_lost: PeersLost(all.counters(
                    "upstream_peers_lost_total",
                    "Connections the upstream ended with 4011 (peer lost), by cause: the partner's relay went silent or was given up (partner_relay), this relay lost its broker or the mesh (this_relay), or frames could not be delivered (delivery).",
                    ["cause"],
                    LostCause::ALL,
                    |c| [c.as_str().to_owned()],
                )),
                retransmits: all.counter(
                    "upstream_retransmits_total",
                    "Frames sent again because the partner had not acknowledged them.",
                ),
                handover_seconds: all.histogram(
                    "upstream_handover_seconds",
                    "Time from sending frames through the upstream to the partner relay's acknowledgement that its client has them (the oldest frame of each acknowledgement), in seconds: a round trip through the broker or link, with the acknowledgement's batching delay.",
                    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                ),
                foreign_messages: all.counter(
                    "upstream_foreign_messages_total",
                    "Messages dropped because they did not come from the partner seat they name.",
                ),
                lease_witnesses: mesh.gauge(
                    "upstream_lease_witnesses",
                    "Introducers whose answer gives this relay its lease now; new rooms need a majority of them (mesh).",
                ),
                rooms_moving: mesh.gauge(
                    "upstream_rooms_moving",
                    "Relays that left the roster lately whose rooms admit no new seat yet, while their pairs' records move to the new owners (mesh).",
                ),
                joins_refused: mesh.counter(
                    "upstream_joins_refused_total",
                    "Joins refused as a room's owner: another relay owns the room by this relay's roster, or this relay was not ready (mesh).",
                ),
                forged: brokers.counter(
                    "upstream_forged_total",
                    "Broker messages, records and slot values dropped: their tag does not verify under the cluster secret (NATS, Kafka).",
                ),
                consumer_lag: kafka.gauge(
                    "upstream_consumer_lag",
                    "Records behind the end of the broker's log, over all partitions (Kafka).",
                ),
                reassignments: kafka.counter(
                    "upstream_reassignments_total",
                    "Partitions read again from a new position: offset gone, or rebuilt from a snapshot (Kafka).",
                ),
                links_up: mesh.gauge("upstream_links_up", "Links to other relays up now (mesh)."),
                roster_size: mesh.gauge("upstream_roster_size", "Relays this one counts as the mesh: alive to the membership, listed by a lease answer, or linked (mesh)."),
                suspicions: mesh.counter(
                    "upstream_suspicions_total",
                    "Links that went down and members declared down by the membership (mesh).",
                ),
                peer_deaths: mesh.counter(
                    "upstream_peer_deaths_total",
                    "Relays given up, whose partners were told 4011 (mesh).",
                ),
                link_auth_failures: mesh.counter(
                    "upstream_link_auth_failures_total",
                    "Link handshakes refused: the other side does not hold the cluster secret (mesh).",
                ),
                handshakes_refused: mesh.counter(
                    "upstream_link_handshakes_refused_total",
                    "Inbound link connections closed unanswered: too many handshakes at once, in all or from their source (mesh).",
                ),
                gossip_refused: mesh.counter(
                    "upstream_gossip_refused_total",
                    "Gossip datagrams dropped: they do not open under the cluster's key (mesh).",
                ),
                mesh_seats: mesh.gauge(
                    "upstream_mesh_seats",
                    "Seats held across the mesh, as each relay on the roster last published its load (mesh).",
                ),
            },
            rooms_open: b.gauge(
                "rooms_open",
                "Rooms in which this relay holds a seat, joins in progress included; a room split over two relays counts on each (--max-rooms bounds this number, per relay).",
            ),
            upstream_connected,
            refused,
            tls_failures,
            tls_logged: Default::default(),
            errors,
            registry,
        }
    }

    /// Counts a connection ended with `code`; a shutdown (1001) is not an error and is counted apart.
    pub fn error(&self, code: ErrorCode) {
        match code {
            ErrorCode::GoingAway => self.shutdown_closes.inc(),
            code => count(&self.errors, code),
        }
    }

    /// Connections ended with `code` so far (for 1001, the shutdown closes).
    pub fn errors(&self, code: ErrorCode) -> u64 {
        match code {
            ErrorCode::GoingAway => self.shutdown_closes.get(),
            code => read(&self.errors, code),
        }
    }

    /// Counts a connection refused before its WebSocket opened.
    pub fn refused(&self, why: Refusal) {
        count(&self.refused, why);
    }

    /// Connections refused for `why` so far.
    pub fn refusals(&self, why: Refusal) -> u64 {
        read(&self.refused, why)
    }

    /// Counts a failed TLS handshake; returns whether it is the first for that reason.
    pub fn tls_failed(&self, why: TlsFailure) -> bool {
        count(&self.tls_failures, why);
        let i = TlsFailure::ALL.iter().position(|r| *r == why);
        i.is_some_and(|i| !self.tls_logged[i].swap(true, Relaxed))
    }

    /// TLS handshakes failed for `why` so far.
    pub fn tls_failures(&self, why: TlsFailure) -> u64 {
        read(&self.tls_failures, why)
    }

    /// The Prometheus text exposition, with the gauges read from the upstream at scrape time.
    pub fn render(&self, rooms_open: usize, upstream_connected: bool) -> String {
        self.rooms_open.set(i64::try_from(rooms_open).unwrap_or(i64::MAX));
        self.upstream_connected.set(i64::from(upstream_connected));
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

fn count<K: PartialEq>(series: &[(K, IntCounter)], key: K) {
    if let Some((_, counter)) = series.iter().find(|(k, _)| *k == key) {
        counter.inc();
    }
}

fn read<K: PartialEq>(series: &[(K, IntCounter)], key: K) -> u64 {
    series.iter().find(|(k, _)| *k == key).map_or(0, |(_, counter)| counter.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_once_and_renders() {
        let config = Config::for_tests();
        let metrics = Metrics::new(&config);
        metrics.error(ErrorCode::GoingAway);
        metrics.error(ErrorCode::RoomFull);
        metrics.refused(Refusal::Capacity);
        let text = metrics.render(3, true);
        // Registering a name twice fails silently in `Builder`; a lost metric shows here.
        for name in [
            "ghostwire_connections_total 0",
            "ghostwire_connections_open 0",
            "ghostwire_rooms_open 3",
            "ghostwire_shutdown_closes_total 1",
            "ghostwire_errors_total{code=\"4002\",reason=\"room_full\"} 1",
            "ghostwire_handshakes_refused_total{reason=\"capacity\"} 1",
            "ghostwire_tls_handshake_failures_total{reason=\"certificate_rejected\"} 0",
            "ghostwire_upstream_connected{upstream=\"local\"} 1",
            "ghostwire_join_seconds_bucket{le=\"0.005\"} ",
            "ghostwire_join_seconds_count ",
            "ghostwire_max_connections ",
            "ghostwire_max_rooms ",
            "ghostwire_build_info{",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(!text.contains("code=\"1001\""), "a shutdown is not an error:\n{text}");
        assert!(!text.contains("ghostwire_upstream_frames_in_total"), "a local relay has no upstream series:\n{text}");
    }

    /// Each relay exports the series of the upstream it runs, and only those: a local relay's
    /// zero mesh gauges, or a NATS relay's Kafka lag, would read as facts.
    #[test]
    fn only_the_running_upstreams_series_are_exported() {
        let exported = |kind: UpstreamKind| {
            let mut config = Config::for_tests();
            config.upstream = kind;
            Metrics::new(&config).render(0, true)
        };
        let has = |text: &str, name: &str| text.lines().any(|l| l.starts_with(name));
        let (nats, kafka, mesh) =
            (exported(UpstreamKind::Nats), exported(UpstreamKind::Kafka), exported(UpstreamKind::Mesh));
        for text in [&nats, &kafka, &mesh] {
            assert!(has(text, "ghostwire_upstream_frames_in_total"));
            assert!(has(text, "ghostwire_upstream_peers_lost_total{cause=\"partner_relay\"}"));
        }
        assert!(has(&nats, "ghostwire_upstream_forged_total") && has(&kafka, "ghostwire_upstream_forged_total"));
        assert!(!has(&mesh, "ghostwire_upstream_forged_total"));
        assert!(has(&kafka, "ghostwire_upstream_consumer_lag") && !has(&nats, "ghostwire_upstream_consumer_lag"));
        assert!(has(&mesh, "ghostwire_upstream_links_up") && !has(&kafka, "ghostwire_upstream_links_up"));
        assert!(!has(&nats, "ghostwire_upstream_lease_witnesses"));
    }
}
