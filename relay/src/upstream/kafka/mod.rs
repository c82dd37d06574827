//! The Kafka upstream: relays that share rooms through one Kafka topic, the log as sequencer.
//!
//! Kafka is the operator's (or a managed service): the relay connects to `--kafka-brokers` and
//! never starts or embeds a broker. Everything crosses one topic, `<prefix>.rooms` (2
//! partitions by default, created if missing with `message.timestamp.type=LogAppendTime` and a
//! short retention), which fits a free tier's 5 topics × 2 partitions with room to spare.
//!
//! * **The log decides.** Every record about a room (a join, frames, acknowledgements, the
//!   departure) is keyed by the keyed room id and written to the partition that id picks, with one
//!   request in flight (a retry cannot reorder; what it duplicates, the log reads as one). Every relay reads every
//!   partition from the same place and feeds the records, in offset order, to the same state
//!   machine ([`log`]); it answers its own joiner only when it reads the joiner's JOIN back,
//!   with the verdict every other relay reaches too. Two seats per room, however joins race.
//! * **Time is the log's.** Each relay writes a heartbeat record to every partition each
//!   `--kafka-heartbeat`; a relay with no record in a partition for `--kafka-peer-timeout`, by
//!   the broker's append timestamps, has lapsed there: every relay agrees at which record its
//!   seats ended, and their partners get 4011.
//! * **Delivery** uses the same numbered, acknowledged frames as every distributed upstream
//!   ([`link`](crate::upstream::link)): the acknowledgement travels as a record, so a sender
//!   never has more than `--peer-queue` frames in flight, and a duplicate is dropped by number.
//!   The log keeps what it acknowledged across a broker restart; the producer sends again what
//!   it had not. A frame the producer gives up on (after `--kafka-peer-timeout`) ends the pair
//!   with 4011, on both sides: the partner sees the hole in the numbers.
//! * **Outages.** A relay that cannot read its own heartbeat back for `--kafka-peer-timeout`
//!   ends its rooms with 4011 and refuses joins (4007) until it can; on the other side of each
//!   pair, the log lapses it at the same bound.
//! * **Burns** are records too (`b`): a join after one in the log, by log time within its
//!   TTL, is refused with 4012 by every relay alike.
//! * **A late relay** rebuilds the rooms from the log: from the newest snapshot of a
//!   partition's state (each relay writes one every `--kafka-snapshot-every`), else from the
//!   start of the log (see [`reader`]).
//!
//! Module map: this file (connection, topic, heartbeats, readiness, join entry), [`log`] (the
//! room state machine), [`wire`] (record bytes), [`reader`] (the task that reads the log and
//! hands each outcome to its seat), [`seat`] (the task that runs one seat).

pub mod log;
mod reader;
mod seat;
pub mod wire;

use super::broker_auth::BrokerKey;
use super::repeats::Repeats;
use super::{BoxFuture, JoinError, Joined, Mailbox, RoomId, Upstream};
use crate::config::{Config, KafkaConfig};
use crate::metrics::Metrics;
use crate::Error;
use log::RelayId;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long one broker operation (metadata, topic creation, a departure's delivery) may take.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Rooms shared through Kafka.
pub struct Kafka {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// What the reader, the seats and the heartbeats share.
struct Shared {
    producer: FutureProducer<Ctx>,
    topic: String,
    /// The topic's partitions, once known (0 before).
    partitions: AtomicI32,
    relay: RelayId,
    next_seat: AtomicU64,
    /// This relay's seats, by number: where the reader sends what the log says about them.
    seats: Mutex<HashMap<u64, tokio::sync::mpsc::UnboundedSender<seat::Event>>>,
    /// Seats held (joins in progress included).
    open: AtomicUsize,
    /// Woken when `open` drops to zero (shutdown waits for it).
    seats_gone: tokio::sync::Notify,
    health: Arc<Health>,
    max_rooms: usize,
    peer_queue: usize,
    max_batch_bytes: usize,
    heartbeat: Duration,
    snapshot_every: Duration,
    peer_timeout: Duration,
    /// Tags every record this relay writes, and checks those it reads.
    key: BrokerKey,
    metrics: Arc<Metrics>,
}

/// What the client library reported, and whether the log is readable: for `/readyz`, the
/// reconnect counter and the start-up check of the credentials.
#[derive(Default)]
struct Health {
    /// The reader has caught up and reads this relay's own heartbeats back.
    ready: AtomicBool,
    /// Why not ready (never holds secrets or room data), and whether that was logged.
    trouble: Mutex<(Option<String>, bool)>,
    /// The brokers were reported down since the log was last readable.
    down: AtomicBool,
    /// The brokers refused the credentials (the library's words).
    auth_failed: Mutex<Option<String>>,
    /// TLS to the brokers failed: a certificate not signed by the CA given, say (its words).
    tls_failed: Mutex<Option<String>>,
    /// Why the last connection to a broker failed (the library's words: a refused connection,
    /// a TLS handshake with a broker that does not speak TLS), until a request succeeds.
    transport: Mutex<Option<String>>,
    /// Records behind the end of the log, from the library's statistics.
    lag: std::sync::atomic::AtomicI64,
    /// The library's errors while the brokers are unreachable, each logged once.
    errors: Mutex<LibraryErrors>,
}

/// The client library's error lines: one per reconnect attempt, every second, while a broker
/// cannot be reached; each is logged once (see [`Repeats`]) until the upstream is ready again.
struct LibraryErrors(Repeats);

impl Default for LibraryErrors {
    fn default() -> LibraryErrors {
        LibraryErrors(Repeats::new("Kafka client error"))
    }
}

/// A library error line without what changes from one attempt to the next (the time spent,
/// the count of suppressed duplicates), so that repeats are recognised.
fn error_kind(message: &str) -> &str {
    message.split(" (after ").next().unwrap_or(message)
}

impl Health {
    /// Records why the upstream is not ready (`None`: it is). An outage is logged once at WARN
    /// with its first reason, and its end once at INFO.
    fn set_trouble(&self, why: Option<String>) {
        self.ready.store(why.is_none(), Ordering::Release);
        let mut trouble = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        let (reason, warned) = &mut *trouble;
        match (&why, *warned) {
            (Some(new), false) => {
                tracing::warn!(reason = %new, "Kafka upstream not ready");
                *warned = true;
            }
            (None, true) => {
                tracing::info!("Kafka upstream ready again");
                *warned = false;
                self.errors.lock().unwrap_or_else(|p| p.into_inner()).0.settled();
            }
            _ => {}
        }
        *reason = why;
    }

    fn trouble(&self) -> Option<String> {
        self.trouble.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }
}

/// The client library's callbacks: errors and logs to tracing, statistics to the lag gauge.
#[derive(Clone)]
struct Ctx(Arc<Health>);

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::debug!(facility = fac, "librdkafka: {message}");
                self.0.errors.lock().unwrap_or_else(|p| p.into_inner()).0.saw(error_kind(message));
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                *self.0.auth_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
                tracing::warn!("Kafka refused the credentials: {reason}");
            }
            Some(RDKafkaErrorCode::SSL) => {
                *self.0.tls_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
                tracing::warn!("TLS to Kafka failed: {reason}");
            }
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure) => {
                self.0.down.store(true, Ordering::Release);
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::BrokerTransportFailure) {
                    *self.0.transport.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
                }
                tracing::debug!("Kafka: {reason}");
            }
            _ => tracing::debug!("Kafka: {error}: {reason}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|(p, _)| **p >= 0)
            .map(|(_, p)| p.consumer_lag.max(0))
            .sum();
        self.0.lag.store(lag, Ordering::Relaxed);
    }
}

impl ConsumerContext for Ctx {}

/// The settings every client (producer, consumer, admin) shares: brokers, TLS, SASL.
fn client_config(kc: &KafkaConfig) -> Result<ClientConfig, Error> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kc.brokers)
        .set("client.id", "ghostwire-relay")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("topic.metadata.refresh.interval.ms", "10000");
    let tls = kc.tls || kc.ca.is_some();
    let protocol = match (tls, kc.sasl_mechanism.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    match &kc.ca {
        Some(ca) if !ca.is_file() => return Err(Error::Config(format!("--kafka-ca {ca:?}: not a readable file"))),
        Some(ca) => {
            c.set("ssl.ca.location", ca.to_string_lossy());
        }
        None if tls => {
            c.set("ssl.ca.location", "probe");
        }
        None => {}
    }
    if let Some(mechanism) = kc.sasl_mechanism {
        let password = kc.password().map_err(Error::Config)?.ok_or_else(|| {
            Error::Config("--kafka-sasl-mechanism needs a password: KAFKA_PASSWORD or --kafka-password-file".into())
        })?;
        c.set("sasl.mechanism", mechanism.as_str())
            .set("sasl.username", kc.user.as_deref().unwrap_or_default())
            .set("sasl.password", password.expose());
    }
    Ok(c)
}

impl Kafka {
    /// Checks the configuration, makes the topic if it is missing and starts reading the log.
    /// Brokers that cannot be reached do not fail this: the relay starts unready (`/readyz` says
    /// why) and keeps trying. Credentials the brokers refuse do.
    ///
    /// # Errors
    /// [`Error::Config`] for unusable TLS or SASL settings, or credentials the brokers refuse.
    pub async fn connect(config: &Config, metrics: Arc<Metrics>) -> Result<Kafka, Error> {
        let kc = &config.kafka;
        let health = Arc::new(Health::default());
        health.trouble.lock().unwrap_or_else(|p| p.into_inner()).0 =
            Some(format!("connecting to Kafka at {}", kc.brokers));
        let base = client_config(kc)?;
        let timeout_ms = kc.peer_timeout.as_millis().clamp(1_000, 300_000).to_string();
        let producer: FutureProducer<Ctx> = base
            .clone()
            // Order without broker-side idempotence: one request in flight per broker, so a
            // retry can duplicate a record but never reorder one, and every record is safe to
            // read twice (numbered frames, seat numbers). See docs/PROTOCOL.md.
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "1")
            .set("retries", "2147483647")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", &timeout_ms)
            .set("message.max.bytes", "1048576")
            .create_with_context(Ctx(Arc::clone(&health)))
            .map_err(|e| Error::Config(format!("Kafka producer: {e}")))?;
        let shared = Arc::new(Shared {
            producer,
            topic: kc.topic(),
            partitions: AtomicI32::new(0),
            relay: random_id(),
            next_seat: AtomicU64::new(1),
            seats: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            seats_gone: tokio::sync::Notify::new(),
            health: Arc::clone(&health),
            max_rooms: config.max_rooms,
            peer_queue: config.peer_queue as usize,
            max_batch_bytes: (256 * 1024).max(config.max_frame_bytes + 64),
            heartbeat: kc.heartbeat,
            snapshot_every: kc.snapshot_every,
            peer_timeout: kc.peer_timeout,
            key: BrokerKey::derive(super::room_id::cluster_secret(config)?.expose().as_bytes(), "kafka"),
            metrics,
        });
        let admin: AdminClient<Ctx> = base
            .create_with_context(Ctx(Arc::clone(&health)))
            .map_err(|e| Error::Config(format!("Kafka admin client: {e}")))?;
        // One attempt now, so that refused credentials or a misconfigured topic stop the start
        // with a clear message; an unreachable cluster is retried in the background.
        let first = ensure_topic(&admin, kc).await;
        if let Some(why) = health.auth_failed.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(Error::Config(format!(
                "Kafka at {} refused the credentials ({why}); check --kafka-user, the password and --kafka-sasl-mechanism",
                kc.brokers
            )));
        }
        if let Some(why) = health.tls_failed.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(Error::Config(format!(
                "TLS to Kafka at {} failed ({why}); check --kafka-ca (the CA that signed the brokers' certificates)",
                kc.brokers
            )));
        }
        if let Err(Setup::Fatal(why)) = &first {
            return Err(Error::Config(why.clone()));
        }
        let consumer_config = {
            let mut c = client_config(kc)?;
            c.set("group.id", format!("ghostwire-relay-{:016x}", shared.relay))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", "10")
                .set("fetch.error.backoff.ms", "100")
                .set("statistics.interval.ms", "2000")
                .set("enable.partition.eof", "false");
            c
        };
        let kafka = Kafka { shared, tasks: TaskTracker::new(), stop: CancellationToken::new() };
        let shared = Arc::clone(&kafka.shared);
        let (stop, tasks, kc) = (kafka.stop.clone(), kafka.tasks.clone(), kc.clone());
        kafka.tasks.spawn(async move {
            let mut result = first;
            loop {
                match result {
                    Ok(partitions) => break start(shared, partitions, consumer_config, &tasks, stop).await,
                    Err(Setup::Fatal(why) | Setup::Retry(why)) => shared.health.set_trouble(Some(why)),
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                result = ensure_topic(&admin, &kc).await;
            }
        });
        Ok(kafka)
    }
}

/// Starts the reader and the heartbeats once the topic's partitions are known.
async fn start(
    shared: Arc<Shared>,
    partitions: i32,
    consumer_config: ClientConfig,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    shared.partitions.store(partitions, Ordering::Release);
    // Creating the consumer asks the brokers for the log's bounds: blocking calls.
    let made = {
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || reader::Reader::new(shared, partitions, consumer_config)).await
    };
    match made.unwrap_or_else(|_| Err("the Kafka consumer's set-up failed".into())) {
        Ok(reader) => {
            tasks.spawn(reader.run(stop.clone()));
            tasks.spawn(heartbeats(shared, stop));
        }
        Err(why) => shared.health.set_trouble(Some(why)),
    }
}

/// Why the topic is not usable yet.
enum Setup {
    /// Worth trying again (the cluster is unreachable, say).
    Retry(String),
    /// The operator must act (a topic that cannot keep log time).
    Fatal(String),
}

/// Makes the rooms topic if it is missing and returns its partition count. A topic that exists
/// must keep the brokers' append time (the log's clock); one that does not is refused with the
/// command that fixes it.
async fn ensure_topic(admin: &AdminClient<Ctx>, kc: &KafkaConfig) -> Result<i32, Setup> {
    let topic = kc.topic();
    let retention = kc.retention.as_millis().to_string();
    let new = NewTopic::new(&topic, kc.partitions, TopicReplication::Fixed(kc.replication))
        .set("message.timestamp.type", "LogAppendTime")
        .set("retention.ms", &retention)
        .set("cleanup.policy", "delete");
    let options = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT)).request_timeout(Some(OP_TIMEOUT));
    match admin.create_topics([&new], &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(_) => tracing::info!(topic = %topic, partitions = kc.partitions, "created the Kafka topic"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => return Err(Setup::Retry(format!("cannot create Kafka topic {topic}: {code}"))),
                }
            }
        }
        Err(e) => {
            // "Operation timed out" says nothing; the library's last transport failure says why.
            let health = &admin.inner().context().0;
            let cause = health.transport.lock().unwrap_or_else(|p| p.into_inner()).take();
            let mut why = cause.map_or_else(|| e.to_string(), |cause| format!("{cause} ({e})"));
            if why.contains("SSL_HANDSHAKE") && why.contains("closed by peer") {
                // What a broker that does not speak TLS does to a TLS hello.
                why.push_str("; is the broker's listener plaintext? (--kafka-tls or --kafka-ca speak TLS)");
            }
            return Err(Setup::Retry(format!("cannot reach Kafka at {}: {why}", kc.brokers)));
        }
    }
    check_timestamps(admin, &topic, &options).await?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&topic), OP_TIMEOUT)
        .map_err(|e| Setup::Retry(format!("cannot read Kafka topic {topic}: {e}")))?;
    let count = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    match i32::try_from(count) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Setup::Retry(format!("Kafka topic {topic} has no partitions yet"))),
    }
}

/// Refuses a topic whose records carry the producers' clocks instead of the brokers'.
async fn check_timestamps(admin: &AdminClient<Ctx>, topic: &str, options: &AdminOptions) -> Result<(), Setup> {
    use rdkafka::admin::ResourceSpecifier;
    let Ok(results) = admin.describe_configs([&ResourceSpecifier::Topic(topic)], options).await else {
        // A broker without DescribeConfigs: the reader checks every record's timestamp type.
        return Ok(());
    };
    let kind = results
        .iter()
        .flatten()
        .flat_map(|r| r.entries.iter())
        .find(|e| e.name == "message.timestamp.type")
        .and_then(|e| e.value.clone());
    match kind.as_deref() {
        Some("CreateTime") => Err(Setup::Fatal(format!(
            "Kafka topic {topic} keeps the producers' clocks (message.timestamp.type=CreateTime); the relays need the \
             brokers' append time. Fix it with: kafka-configs.sh --bootstrap-server <broker> --alter --entity-type \
             topics --entity-name {topic} --add-config message.timestamp.type=LogAppendTime"
        ))),
        _ => Ok(()),
    }
}

/// A random 64-bit relay id, new at every start.
fn random_id() -> RelayId {
    use rand_core::RngCore;
    rand_core::OsRng.next_u64()
}

impl Shared {
    /// The partition `room` lives in: the same on every relay (the first four bytes of its
    /// keyed id), so all its records are in one order.
    fn partition_of(&self, room: &[u8; 16]) -> i32 {
        let n = self.partitions.load(Ordering::Acquire).max(1);
        let head = u32::from_be_bytes([room[0], room[1], room[2], room[3]]);
        i32::try_from(head % n.unsigned_abs()).unwrap_or(0)
    }

    /// `value` with its tag for `partition` and `key` (see
    /// [`broker_auth`](crate::upstream::broker_auth)): bound to the topic, the partition and the
    /// room, so a record moved anywhere else does not verify.
    fn seal(&self, partition: i32, key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
        let p = partition.to_be_bytes();
        self.key.seal(&self.place(&p, key), value)
    }

    /// The value of a record read at `partition` with `key`, if its tag verifies; a forgery is
    /// counted. Every relay drops the same records, so the logs stay alike.
    fn open(&self, partition: i32, key: Option<&[u8]>, value: bytes::Bytes) -> Option<bytes::Bytes> {
        let p = partition.to_be_bytes();
        let opened = self.key.open_bytes(&self.place(&p, key), value);
        if opened.is_none() {
            self.metrics.upstream.forged.inc();
        }
        opened
    }

    fn place<'a>(&'a self, partition: &'a [u8; 4], key: Option<&'a [u8]>) -> [&'a [u8]; 4] {
        [b"rec", self.topic.as_bytes(), partition, key.unwrap_or(b"")]
    }

    /// Queues a record for `room`'s partition; the future says whether the log took it.
    fn produce(&self, room: &[u8; 16], value: &[u8]) -> Option<rdkafka::producer::DeliveryFuture> {
        let partition = self.partition_of(room);
        let sealed = self.seal(partition, Some(&room[..]), value);
        let record = FutureRecord::to(&self.topic).partition(partition).key(&room[..]).payload(&sealed);
        match self.producer.send_result(record) {
            Ok(delivery) => Some(delivery),
            Err((e, _)) => {
                tracing::debug!(error = %e, "Kafka producer refused a record");
                self.metrics.upstream.publish_errors.inc();
                None
            }
        }
    }

    /// Numbers a new seat, registers where the reader tells it what the log says, and writes its
    /// JOIN, all under one lock: seat numbers then follow the order of the joins in each
    /// partition, which is how the log tells a join read again from a new one.
    fn join(
        &self,
        room: &[u8; 16],
        events: tokio::sync::mpsc::UnboundedSender<seat::Event>,
    ) -> (log::Seat, Option<rdkafka::producer::DeliveryFuture>) {
        let mut seats = self.seats.lock().unwrap_or_else(|p| p.into_inner());
        let seat = log::Seat { relay: self.relay, n: self.next_seat.fetch_add(1, Ordering::Relaxed) };
        seats.insert(seat.n, events);
        let delivery = self.produce(room, &wire::join(seat));
        (seat, delivery)
    }

    /// Sends `event` to this relay's seat `n`, if it still exists.
    fn tell(&self, n: u64, event: seat::Event) {
        if let Some(tx) = self.seats.lock().unwrap_or_else(|p| p.into_inner()).get(&n) {
            let _ = tx.send(event);
        }
    }

    /// Ends every seat of this relay with `event` (the log cannot be read).
    fn tell_all(&self, event: impl Fn() -> seat::Event) {
        for tx in self.seats.lock().unwrap_or_else(|p| p.into_inner()).values() {
            let _ = tx.send(event());
        }
    }
}

/// Writes this relay's heartbeat to every partition each `--kafka-heartbeat`.
async fn heartbeats(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let value = wire::alive(shared.relay);
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                for p in 0..shared.partitions.load(Ordering::Acquire) {
                    let sealed = shared.seal(p, None, &value);
                    let record = FutureRecord::<[u8], _>::to(&shared.topic).partition(p).payload(&sealed);
                    match shared.producer.send_result(record) {
                        Ok(delivery) => in_flight.push(delivery),
                        Err(_) => shared.metrics.upstream.publish_errors.inc(),
                    }
                }
            }
            Some(delivered) = futures_util::StreamExt::next(&mut in_flight) => {
                if !matches!(delivered, Ok(Ok(_))) {
                    shared.metrics.upstream.publish_errors.inc();
                }
            }
        }
    }
}

impl Upstream for Kafka {
    fn join<'a>(&'a self, room: &'a RoomId, me: Mailbox) -> BoxFuture<'a, Result<Joined, JoinError>> {
        Box::pin(seat::join(Arc::clone(&self.shared), &self.tasks, room.bytes(), me))
    }

    fn burn<'a>(&'a self, room: &'a RoomId, ttl: Duration) -> BoxFuture<'a, Result<(), JoinError>> {
        Box::pin(async move {
            let unavailable = |why: &str| Err(JoinError::Unavailable(why.to_owned()));
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let Some(delivery) = self.shared.produce(&room.bytes(), &wire::burn(self.shared.relay, ttl_ms)) else {
                return unavailable("the Kafka producer's queue is full");
            };
            // Once the log took it, every join after it in the log is refused; the burner's later
            // frames are produced after this returns, so they come after it too.
            match tokio::time::timeout(OP_TIMEOUT.max(self.shared.peer_timeout), delivery).await {
                Ok(Ok(Ok(_))) => Ok(()),
                _ => {
                    self.shared.metrics.upstream.publish_errors.inc();
                    unavailable("Kafka did not take the burn")
                }
            }
        })
    }

    fn ready(&self) -> Result<(), String> {
        if self.shared.health.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(self.shared.health.trouble().unwrap_or_else(|| "Kafka upstream not ready".into()))
    }

    fn open_rooms(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Seats end when their connections do; give their departures time to reach the log.
            let seats_done = super::until_zero(&self.shared.open, &self.shared.seats_gone);
            if tokio::time::timeout(OP_TIMEOUT, seats_done).await.is_err() {
                tracing::warn!("some departures did not reach Kafka before shutdown");
            }
            self.stop.cancel();
            self.tasks.close();
            let producer = self.shared.producer.clone();
            let _ =
                tokio::task::spawn_blocking(move || rdkafka::producer::Producer::flush(&producer, OP_TIMEOUT)).await;
        })
    }
}
