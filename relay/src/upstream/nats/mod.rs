//! The NATS upstream: every relay connected to one NATS shares one room space.
//!
//! NATS is the operator's infrastructure: the relay connects to `--nats-url`
//! and never starts, embeds or supervises a server. What crosses it:
//!
//! * **Slots.** A room has two slots, keys `<room-id>.a` and `<room-id>.b` in a
//!   JetStream key-value bucket with memory storage. A join takes a slot with
//!   an atomic `create` (first `.a`, else `.b`); both taken means ERROR 4002.
//!   The broker decides, so two relays can never both admit a third peer.
//!   `<room-id>` is the keyed room id ([`RoomId`]), so neither the broker nor
//!   anyone reading it learns a room code. Each seat renews its slot
//!   every third of `--nats-slot-ttl` (a revision-checked update); the bucket's
//!   `max_age` frees the slots of a relay that died.
//! * **Seats.** Each seat subscribes to `<prefix>.seat.<relay>.<n>.*`, a random
//!   relay id and a counter, nothing derived from the room. The holder of
//!   `.b` reads the holder of `.a` from its slot and asks it (request `.j`)
//!   to pair; frames then travel as `.f` messages (the payload is the frame,
//!   byte for byte), and a departure as `.l` after the last frame.
//!   NATS keeps the order of one connection's messages, which gives the
//!   contract's ordering.
//! * **Heartbeats.** Each relay publishes `<prefix>.hb.<relay>` every
//!   `--nats-heartbeat`. A partner whose relay is not heard for
//!   `--nats-peer-timeout` is gone: its rooms' local peers get PEER_LEFT within
//!   that time plus one heartbeat. A relay that loses NATS stops hearing
//!   everyone, so its cross-NATS rooms end the same way on both sides.
//!
//! * **Burns.** A burnt room is a key `<room-id>` in a second bucket, `<prefix>-burnt`, whose
//!   `max_age` is `--burn-ttl`; its value is the moment the burn ends and a tag. A join checks it
//!   before taking a slot, and again once it holds `.b`: the burner wrote it before its pair's
//!   slots were freed, so no pair forms in a burnt room. A relay writes its burns again after a
//!   server restart.
//!
//! * **Tags.** The broker is not trusted: every message, request answer and slot
//!   value carries a tag under the cluster secret ([`broker_auth`](super::broker_auth)),
//!   checked before anything else is read. A forger on the broker can delay, drop
//!   and delete slots; it cannot pair, inject or announce a departure.
//!
//! Module map: this file (connection, readiness, join entry, tags), `seat` (the join
//! protocol and the task that runs one seat), `liveness` (who is still heard).

mod liveness;
mod seat;
mod tls;

use super::broker_auth::BrokerKey;
use super::repeats::Repeats;
use super::{BoxFuture, JoinError, Joined, Mailbox, RoomId, Upstream};
use crate::config::{shown_url, Config, NatsConfig};
use crate::metrics::Metrics;
use crate::Error;
use async_nats::jetstream::{self, kv};
use async_nats::{Client, ConnectOptions, Event};
use liveness::Liveness;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long one broker operation (key-value request, join request) may take.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Rooms shared through NATS.
pub struct Nats {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// What the join tasks, seat tasks and background tasks share.
struct Shared {
    client: Client,
    js: jetstream::Context,
    /// The bucket, once it exists on the server; `None` again when the connection drops (after
    /// a server restart it must be made again). `Some` is what "ready" means.
    bucket: Mutex<Option<kv::Store>>,
    /// The bucket of burnt rooms, set with `bucket`.
    burnt: Mutex<Option<kv::Store>>,
    /// The burns this relay wrote (key → end, Unix ms), written again after a server restart.
    burns: Mutex<std::collections::HashMap<String, u64>>,
    burn_ttl: Duration,
    /// Why the upstream is not ready, for `/readyz` (never holds secrets or room data), and
    /// whether that was logged (once per outage).
    trouble: Mutex<(Option<String>, bool)>,
    /// Why the NATS server's certificate was last refused (async-nats does not say).
    tls_refusal: tls::Refusal,
    /// Counts the connections to NATS made so far; seats send again what is unacknowledged when
    /// it moves (messages in flight when a connection dropped may be lost).
    generation: tokio::sync::watch::Sender<u64>,
    /// The slots this relay's seats hold (key → seat id): made again by the keeper, before the
    /// relay is ready, when a restarted server has lost them.
    slots: Mutex<std::collections::HashMap<String, String>>,
    names: Names,
    relay_id: String,
    next_seat: AtomicU64,
    seats: AtomicUsize,
    /// Woken when `seats` drops to zero (shutdown waits for it).
    seats_gone: tokio::sync::Notify,
    max_rooms: usize,
    peer_queue: usize,
    slot_ttl: Duration,
    liveness: Liveness,
    /// Tags every message and slot value this relay writes, and checks those it reads.
    key: BrokerKey,
    metrics: Arc<Metrics>,
}

/// Subject and bucket names under `--nats-prefix`.
struct Names {
    prefix: String,
    bucket: String,
    burnt: String,
}

impl Names {
    fn seat(&self, seat: &str) -> String {
        format!("{}.seat.{seat}", self.prefix)
    }
    /// A message of `kind` from seat `from` to seat `to`.
    fn to(&self, to: &str, kind: &str, from: &str) -> String {
        format!("{}.seat.{to}.{kind}.{from}", self.prefix)
    }
    fn heartbeat(&self, relay: &str) -> String {
        format!("{}.hb.{relay}", self.prefix)
    }
}

impl Nats {
    /// Checks the configuration and starts connecting. An unreachable NATS does not fail this:
    /// the relay starts unready (`/readyz` says why) and keeps trying.
    ///
    /// # Errors
    /// [`Error::Config`] for an unreadable credentials file or CA.
    pub async fn connect(config: &Config, metrics: Arc<Metrics>) -> Result<Nats, Error> {
        let nc = &config.nats;
        let (events_tx, events) = mpsc::unbounded_channel();
        let (options, tls_refusal) = options(nc, events_tx).await?;
        let client = options
            .connect(nc.url.as_str())
            .await
            .map_err(|e| Error::Config(format!("--nats-url {:?}: {e}", shown_url(&nc.url))))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(OP_TIMEOUT);
        let shared = Arc::new(Shared {
            client,
            js,
            bucket: Mutex::new(None),
            burnt: Mutex::new(None),
            burns: Mutex::new(std::collections::HashMap::new()),
            burn_ttl: config.burn_ttl,
            trouble: Mutex::new((Some(format!("connecting to NATS at {}", shown_url(&nc.url))), false)),
            tls_refusal,
            generation: tokio::sync::watch::Sender::new(0),
            slots: Mutex::new(std::collections::HashMap::new()),
            names: Names {
                prefix: nc.prefix.clone(),
                bucket: format!("{}-rooms", nc.prefix),
                burnt: format!("{}-burnt", nc.prefix),
            },
            relay_id: random_id(),
            next_seat: AtomicU64::new(1),
            seats: AtomicUsize::new(0),
            seats_gone: tokio::sync::Notify::new(),
            max_rooms: config.max_rooms,
            peer_queue: config.peer_queue as usize,
            slot_ttl: nc.slot_ttl.max(Duration::from_secs(1)),
            liveness: Liveness::new(nc.peer_timeout),
            key: BrokerKey::derive(super::room_id::cluster_secret(config)?.expose().as_bytes(), "nats"),
            metrics,
        });
        let nats = Nats { shared, tasks: TaskTracker::new(), stop: CancellationToken::new() };
        nats.tasks.spawn(keeper(Arc::clone(&nats.shared), events, nats.stop.clone(), shown_url(&nc.url)));
        nats.tasks.spawn(heartbeats(Arc::clone(&nats.shared), nc.heartbeat, nats.stop.clone()));
        Ok(nats)
    }
}

/// The client options for `nc`: authentication, TLS, reconnection and the event channel.
async fn options(
    nc: &NatsConfig,
    events: mpsc::UnboundedSender<Event>,
) -> Result<(ConnectOptions, tls::Refusal), Error> {
    let mut o = ConnectOptions::new()
        .name("ghostwire-relay")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(OP_TIMEOUT)
        .request_timeout(Some(OP_TIMEOUT))
        .reconnect_delay_callback(|attempt| Duration::from_millis(100 * 2u64.pow(attempt.min(3) as u32)))
        .event_callback(move |event| {
            let _ = events.send(event);
            std::future::ready(())
        });
    if let Some(token) = nc.token().map_err(Error::Config)? {
        o = o.token(token.expose().to_owned());
    }
    if let (Some(user), Some(password)) = (&nc.user, nc.password().map_err(Error::Config)?) {
        o = o.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(seed) = nc.nkey().map_err(Error::Config)? {
        o = o.nkey(seed.expose().to_owned());
    }
    if let Some(creds) = &nc.creds {
        o = o.credentials_file(creds).await.map_err(|e| Error::Config(format!("--nats-creds {creds:?}: {e}")))?;
    }
    if let Some(ca) = &nc.ca {
        if !ca.is_file() {
            return Err(Error::Config(format!("--nats-ca {ca:?}: not a readable file")));
        }
        o = o.require_tls(true);
    }
    let mut refusal = tls::Refusal::default();
    if let Some((config, kept)) = tls::config(nc.ca.as_deref()).map_err(Error::Config)? {
        o = o.tls_client_config(config);
        refusal = kept;
    }
    Ok((o, refusal))
}

/// The wall clock in Unix milliseconds (burns end at a moment every relay reads alike, to
/// within their clocks' skew).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A random 64-bit id in hex: this relay's name on the broker, new at every start.
fn random_id() -> String {
    use rand_core::RngCore;
    format!("{:016x}", rand_core::OsRng.next_u64())
}

impl Shared {
    /// The bucket, while connected and it exists.
    fn bucket(&self) -> Option<kv::Store> {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_bucket(&self, store: Option<(kv::Store, kv::Store)>) {
        let (rooms, burnt) = store.unzip();
        *self.burnt.lock().unwrap_or_else(|p| p.into_inner()) = burnt;
        *self.bucket.lock().unwrap_or_else(|p| p.into_inner()) = rooms;
    }

    /// The bucket of burnt rooms, while connected and it exists.
    fn burnt_bucket(&self) -> Option<kv::Store> {
        self.burnt.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The value of burn key `key`: when the burn ends (Unix ms) and its tag.
    fn burn_value(&self, key: &str, until_ms: u64) -> bytes::Bytes {
        bytes::Bytes::from(
            self.key.seal(&[b"burn", self.names.burnt.as_bytes(), key.as_bytes()], &until_ms.to_be_bytes()),
        )
    }

    /// Whether room `room` (its hex id) is burnt now. A value without this cluster's tag burns
    /// nothing (it is counted).
    async fn is_burnt(&self, room: &str) -> Result<bool, JoinError> {
        let Some(kv) = self.burnt_bucket() else {
            return Err(JoinError::Unavailable("NATS upstream not ready".into()));
        };
        let value = match tokio::time::timeout(OP_TIMEOUT, kv.get(room)).await {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => return Err(JoinError::Unavailable(e.to_string())),
            Err(e) => return Err(JoinError::Unavailable(e.to_string())),
        };
        let Some(value) = value else { return Ok(false) };
        let until = self.key.open(&[b"burn", self.names.burnt.as_bytes(), room.as_bytes()], &value);
        let Some(until) = until.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes) else {
            self.metrics.upstream.forged.inc();
            return Ok(false);
        };
        Ok(until > unix_ms())
    }

    /// Writes the burn of `room` (its hex id) for `ttl`, and remembers it for a server restart.
    async fn burn(&self, room: String, ttl: Duration) -> Result<(), JoinError> {
        let Some(kv) = self.burnt_bucket() else {
            return Err(JoinError::Unavailable("NATS upstream not ready".into()));
        };
        let until = unix_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        match tokio::time::timeout(OP_TIMEOUT, kv.put(&room, self.burn_value(&room, until))).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(JoinError::Unavailable(e.to_string())),
            Err(e) => return Err(JoinError::Unavailable(e.to_string())),
        }
        let now = unix_ms();
        let mut burns = self.burns.lock().unwrap_or_else(|p| p.into_inner());
        burns.retain(|_, until| *until > now);
        burns.insert(room, until);
        Ok(())
    }

    /// Writes again the burns of this relay that have not ended (a restarted server lost them).
    async fn remake_burns(&self, store: &kv::Store) {
        let now = unix_ms();
        let burns: Vec<(String, u64)> = {
            let mut burns = self.burns.lock().unwrap_or_else(|p| p.into_inner());
            burns.retain(|_, until| *until > now);
            burns.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        for (key, until) in burns {
            let _ = tokio::time::timeout(OP_TIMEOUT, store.put(&key, self.burn_value(&key, until))).await;
        }
    }

    /// Records why the upstream is not ready (`None`: it is). An outage is logged once at WARN
    /// with its first reason, and its end once at INFO; the reason shown by `/readyz` follows
    /// every change.
    fn set_trouble(&self, why: Option<String>) {
        let mut trouble = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        let (reason, warned) = &mut *trouble;
        match (&why, *warned) {
            (Some(new), false) => {
                tracing::warn!(reason = %new, "NATS upstream not ready");
                *warned = true;
            }
            (None, true) => {
                tracing::info!("NATS upstream ready again");
                *warned = false;
            }
            _ => {}
        }
        *reason = why;
    }

    /// Makes again every slot this relay's seats hold that the server no longer has (a restarted
    /// server lost them), before any join can take one. A slot another seat took meanwhile stays
    /// theirs; that seat's renewal then finds it lost.
    async fn remake_slots(&self, store: &kv::Store) {
        let slots: Vec<(String, String)> =
            self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, id) in slots {
            let _ = tokio::time::timeout(OP_TIMEOUT, store.create(&key, self.slot_value(&key, &id))).await;
        }
    }

    /// `payload` tagged for `subject` (see [`broker_auth`](crate::upstream::broker_auth)).
    fn seal(&self, subject: &str, payload: &[u8]) -> bytes::Bytes {
        bytes::Bytes::from(self.key.seal(&[b"msg", subject.as_bytes()], payload))
    }

    /// The payload of a message on `subject` if its tag verifies; a forgery is counted.
    fn open(&self, subject: &str, payload: bytes::Bytes) -> Option<bytes::Bytes> {
        let opened = self.key.open_bytes(&[b"msg", subject.as_bytes()], payload);
        if opened.is_none() {
            self.metrics.upstream.forged.inc();
        }
        opened
    }

    /// The answer to a request made on `request`, tagged for it and for the reply subject (unique
    /// per request), so an answer can be neither forged nor moved to another request.
    fn seal_reply(&self, request: &str, reply: &str, answer: &[u8]) -> bytes::Bytes {
        bytes::Bytes::from(self.key.seal(&[b"reply", request.as_bytes(), reply.as_bytes()], answer))
    }

    /// A tagged request on `subject`: the verified answer, or `None` for an answer that does not
    /// verify (counted; to the caller, as good as no answer).
    async fn request(&self, subject: String) -> Result<Option<bytes::Bytes>, async_nats::RequestError> {
        let sealed = self.seal(&subject, b"");
        let reply = self.client.request(subject.clone(), sealed).await?;
        let opened = self.key.open_bytes(&[b"reply", subject.as_bytes(), reply.subject.as_bytes()], reply.payload);
        if opened.is_none() {
            self.metrics.upstream.forged.inc();
        }
        Ok(opened)
    }

    /// The value of slot `key` held by seat `id`: the id and its tag for that key.
    fn slot_value(&self, key: &str, id: &str) -> bytes::Bytes {
        bytes::Bytes::from(self.key.seal(&[b"slot", self.names.bucket.as_bytes(), key.as_bytes()], id.as_bytes()))
    }

    /// The seat a slot's value names, if a relay of this cluster wrote it for this key.
    fn slot_holder<'v>(&self, key: &str, value: &'v [u8]) -> Option<&'v str> {
        let id = self.key.open(&[b"slot", self.names.bucket.as_bytes(), key.as_bytes()], value);
        if id.is_none() {
            self.metrics.upstream.forged.inc();
        }
        id.and_then(|id| std::str::from_utf8(id).ok()).filter(|id| seat::is_seat_id(id))
    }

    /// Records (or, with `None`, forgets) the slot `key` held by seat `id`.
    fn hold_slot(&self, key: &str, id: Option<&str>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match id {
            Some(id) => slots.insert(key.to_owned(), id.to_owned()),
            None => slots.remove(key),
        };
    }

    /// Finds or makes the room bucket (slots expire after the TTL unless renewed) and the
    /// bucket of burnt rooms (burns expire after `--burn-ttl`).
    async fn ensure_buckets(&self) -> Result<(kv::Store, kv::Store), String> {
        let rooms =
            self.ensure_bucket(&self.names.bucket, self.slot_ttl, "Ghostwire room slots (keyed room ids; memory only)");
        let burnt = self.ensure_bucket(&self.names.burnt, self.burn_ttl, "Ghostwire burnt rooms (keyed room ids)");
        Ok((rooms.await?, burnt.await?))
    }

    /// Finds or makes bucket `name`: memory storage, one value per key, values expire after
    /// `max_age`.
    async fn ensure_bucket(&self, name: &str, max_age: Duration, what: &str) -> Result<kv::Store, String> {
        if let Ok(store) = self.js.get_key_value(name).await {
            return Ok(store);
        }
        // The stream a key-value bucket is, made directly: the client's own `create_key_value`
        // first reads account limits in a shape that nats-server 2.9 does not send.
        let stream = jetstream::stream::Config {
            name: format!("KV_{name}"),
            description: Some(what.into()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: jetstream::stream::StorageType::Memory,
            num_replicas: 1,
            discard: jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            duplicate_window: max_age.min(Duration::from_secs(120)),
            ..Default::default()
        };
        self.js
            .get_or_create_stream(stream)
            .await
            .map_err(|e| format!("cannot create the key-value bucket {name}: {e}"))?;
        self.js.get_key_value(name).await.map_err(|e| format!("cannot open the key-value bucket {name}: {e}"))
    }
}

/// Follows the client's connection events: readiness, reconnect count, and the bucket, which is
/// (re)made after each connect because a restarted server has lost it (memory storage).
async fn keeper(shared: Arc<Shared>, mut events: mpsc::UnboundedReceiver<Event>, stop: CancellationToken, url: String) {
    let mut connects = 0u64;
    let mut server_errors = Repeats::new("NATS server error");
    // Connected, and the bucket not made yet: try now, and again every second until it works.
    let mut want_bucket = false;
    loop {
        if want_bucket {
            match shared.ensure_buckets().await {
                Ok(store) => {
                    shared.remake_slots(&store.0).await;
                    shared.remake_burns(&store.1).await;
                    // Round trip to the server: every subscription the client made again on
                    // reconnecting is in place before joins can address this relay's seats.
                    let _ = tokio::time::timeout(OP_TIMEOUT, shared.client.flush()).await;
                    shared.set_bucket(Some(store));
                    shared.set_trouble(None);
                    want_bucket = false;
                }
                Err(why) => shared.set_trouble(Some(why)),
            }
        }
        let event = tokio::select! {
            () = stop.cancelled() => return,
            e = events.recv() => match e { Some(e) => e, None => return },
            () = tokio::time::sleep(Duration::from_secs(1)), if want_bucket => continue,
        };
        match event {
            Event::Connected => {
                connects += 1;
                if connects > 1 {
                    shared.metrics.upstream.reconnects.inc();
                }
                tracing::debug!("connected to NATS");
                server_errors.settled();
                shared.generation.send_modify(|g| *g += 1);
                want_bucket = true;
            }
            Event::Disconnected => {
                want_bucket = false;
                shared.set_bucket(None);
                shared.set_trouble(Some(format!("lost the connection to NATS at {url}; reconnecting")));
            }
            Event::ClientError(e) => {
                // Every failed attempt (the first and the change of cause are logged by
                // `set_trouble`, at WARN).
                tracing::debug!(error = %e, "NATS connection attempt failed");
                if shared.bucket().is_none() {
                    let why = match shared.tls_refusal.take() {
                        Some(refused) => format!(
                            "cannot reach NATS at {url}: its TLS certificate was refused: {refused} \
                             (give the CA that signed it with --nats-ca, and use the name it was issued for)"
                        ),
                        None => format!(
                            "cannot reach NATS at {url}: {e} (check --nats-url, the NATS credentials and, for TLS, --nats-ca)"
                        ),
                    };
                    shared.set_trouble(Some(why));
                }
            }
            Event::ServerError(e) => server_errors.saw(&e.to_string()),
            Event::SlowConsumer(_) => tracing::warn!("NATS dropped messages for a slow subscription"),
            Event::LameDuckMode | Event::Draining | Event::Closed => tracing::info!(event = %event, "NATS"),
        }
    }
}

/// Publishes this relay's heartbeat and ends the pairs with relays no longer heard.
async fn heartbeats(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    let subject = shared.names.heartbeat(&shared.relay_id);
    let all = shared.names.heartbeat("*");
    let mut sub = loop {
        match shared.client.subscribe(all.clone()).await {
            Ok(sub) => break sub,
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to heartbeats; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                // Bounded: while NATS is away the client's buffer may be full, and the sweep
                // below must still run.
                let beat = shared.seal(&subject, b"");
                let sent = tokio::time::timeout(every, shared.client.publish(subject.clone(), beat)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    shared.metrics.upstream.publish_errors.inc();
                }
                let lost = shared.liveness.sweep();
                if lost > 0 {
                    tracing::info!(relays = lost, "relays not heard within --nats-peer-timeout: ending their rooms");
                }
            }
            Some(msg) = futures_util::StreamExt::next(&mut sub) => {
                // A heartbeat keeps a relay's pairs alive: only a tagged one counts.
                if shared.open(&msg.subject, msg.payload).is_none() {
                    continue;
                }
                if let Some(relay) = msg.subject.as_str().rsplit('.').next() {
                    shared.liveness.heard(relay);
                }
            }
        }
    }
}

impl Upstream for Nats {
    fn join<'a>(&'a self, room: &'a RoomId, me: Mailbox) -> BoxFuture<'a, Result<Joined, JoinError>> {
        let room = room.hex();
        // The join runs in its own task, so a connection that goes away mid-join cannot leave a
        // slot behind: the task finishes, and the seat it made is dropped, which releases it.
        let task = self.tasks.spawn(seat::join(Arc::clone(&self.shared), self.tasks.clone(), room, me));
        Box::pin(async move { task.await.unwrap_or_else(|_| Err(JoinError::Unavailable("join task failed".into()))) })
    }

    fn burn<'a>(&'a self, room: &'a RoomId, ttl: Duration) -> BoxFuture<'a, Result<(), JoinError>> {
        Box::pin(self.shared.burn(room.hex(), ttl))
    }

    fn ready(&self) -> Result<(), String> {
        if self.shared.bucket().is_some() {
            return Ok(());
        }
        let trouble = self.shared.trouble.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
        Err(trouble.unwrap_or_else(|| "NATS upstream not ready".into()))
    }

    fn open_rooms(&self) -> usize {
        self.shared.seats.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "nats"
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Seats end when their connections do; give their departures time to reach NATS.
            let seats_done = super::until_zero(&self.shared.seats, &self.shared.seats_gone);
            if tokio::time::timeout(OP_TIMEOUT, seats_done).await.is_err() {
                tracing::warn!("some departures did not reach NATS before shutdown");
            }
            self.stop.cancel();
            self.tasks.close();
            let _ = tokio::time::timeout(OP_TIMEOUT, self.shared.client.flush()).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::shown_url;

    #[test]
    fn credentials_in_the_url_are_never_shown() {
        assert_eq!(shown_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(shown_url("nats://relay:s3cret@nats:4222"), "nats://…@nats:4222");
        assert_eq!(shown_url("tls://tok@a:1,nats://b:2"), "tls://…@a:1,nats://b:2");
        assert_eq!(shown_url("u:p@host:4222"), "…@host:4222");
    }
}
