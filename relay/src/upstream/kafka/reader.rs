//! The reader: one task that reads every partition of the rooms topic, in offset order, applies
//! each record to that partition's room log and hands each outcome to the seat it concerns.
//!
//! It is also how the relay knows the log works: reading its own heartbeat back is what makes
//! the upstream ready, and not reading it for `--kafka-peer-timeout` ends every seat of this
//! relay with 4011 (on the other relays, the log lapses this one at the same bound).

use super::log::{Outcome, Partition, Seat};
use super::seat::{Event, LostWhy};
use super::wire::{self, Body, Value};
use super::{Ctx, Shared};
use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A room id as the log keys it.
pub(super) type Room = [u8; 16];

/// The reader's state: the consumer and one room log per partition.
pub(super) struct Reader {
    shared: Arc<Shared>,
    consumer: StreamConsumer<Ctx>,
    logs: Vec<Partition<Room>>,
    /// The next offset expected in each partition (what was read, plus one).
    next: Vec<i64>,
    /// Whether this relay's state of each partition is exact (rebuilt from a snapshot or the
    /// whole log): only then does it write snapshots of it.
    exact: Vec<bool>,
    /// Whether a snapshot too large to write was logged about.
    warned_size: bool,
    /// Log time after which a silent relay lapses, in milliseconds.
    ttl: i64,
    /// When this relay's own heartbeat was last read back.
    last_own: Option<Instant>,
    /// Whether the upstream has been ready once (a later readiness after a reported outage is a
    /// reconnect).
    was_ready: bool,
    /// Whether a record without the brokers' append time was logged about.
    warned_clock: bool,
}

impl Reader {
    /// A consumer assigned every partition where its state can be rebuilt: just after the newest
    /// snapshot in the log, with that state, or else from the start of the log. Blocking: it
    /// reads the log once to find the snapshots.
    pub(super) fn new(shared: Arc<Shared>, partitions: i32, config: ClientConfig) -> Result<Reader, String> {
        let ttl = i64::try_from(shared.peer_timeout.as_millis()).unwrap_or(i64::MAX);
        let mut logs = Vec::new();
        let mut next = Vec::new();
        let mut exact = Vec::new();
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            let (log, from, whole) = rebuild(&shared, &config, p, ttl);
            let offset = if from == 0 { Offset::Beginning } else { Offset::Offset(from) };
            assignment.add_partition_offset(&shared.topic, p, offset).map_err(|e| format!("Kafka assignment: {e}"))?;
            logs.push(log);
            next.push(from);
            exact.push(whole);
        }
        let consumer: StreamConsumer<Ctx> =
            config.create_with_context(Ctx(Arc::clone(&shared.health))).map_err(|e| format!("Kafka consumer: {e}"))?;
        consumer.assign(&assignment).map_err(|e| format!("Kafka assignment: {e}"))?;
        Ok(Reader {
            shared,
            consumer,
            logs,
            next,
            exact,
            ttl,
            last_own: None,
            was_ready: false,
            warned_clock: false,
            warned_size: false,
        })
    }

    /// Writes the state of every partition this relay knows exactly, for relays that start
    /// later (a snapshot record moves the log's clock like a heartbeat).
    fn write_snapshots(&mut self) {
        for (p, log) in self.logs.iter().enumerate() {
            if !self.exact[p] || self.next[p] == 0 {
                continue;
            }
            let state = log.snapshot();
            if state.len() > MAX_SNAPSHOT {
                if !self.warned_size {
                    self.warned_size = true;
                    tracing::warn!(
                        partition = p,
                        bytes = state.len(),
                        "too many rooms for one snapshot record; none written"
                    );
                }
                continue;
            }
            let Ok(partition) = i32::try_from(p) else { continue };
            let value = self.shared.seal(
                partition,
                None,
                &wire::snapshot(self.shared.relay, self.next[p].unsigned_abs(), &state),
            );
            let record = rdkafka::producer::FutureRecord::<[u8], _>::to(&self.shared.topic)
                .partition(partition)
                .payload(&value[..]);
            // The delivery is not awaited: a lost snapshot is replaced by the next one.
            if self.shared.producer.send_result(record).is_err() {
                self.shared.metrics.upstream.publish_errors.inc();
            }
        }
    }

    /// Reads until `stop`.
    pub(super) async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.shared.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = self.shared.snapshot_every;
        let mut snapshot = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        snapshot.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => self.check_own_heartbeat(),
                _ = snapshot.tick() => self.write_snapshots(),
                message = self.consumer.recv() => match message {
                    Ok(m) => {
                        let (partition, offset, timestamp) = (m.partition(), m.offset(), m.timestamp());
                        let key = m.key().map(Bytes::copy_from_slice);
                        let value = m.payload().map(Bytes::copy_from_slice);
                        drop(m);
                        self.on_record(partition, offset, timestamp, key, value);
                    }
                    Err(e) => tracing::debug!(error = %e, "Kafka consumer"),
                },
            }
        }
        // The seats hear nothing more: each one still running ends as its connection does.
        self.shared.metrics.upstream.consumer_lag.set(0);
    }

    /// Ends this relay's rooms when its own heartbeats stopped coming back.
    fn check_own_heartbeat(&mut self) {
        self.shared.metrics.upstream.consumer_lag.set(self.shared.health.lag.load(Ordering::Relaxed));
        let Some(last) = self.last_own else { return };
        if last.elapsed() <= self.shared.peer_timeout || !self.shared.health.ready.load(Ordering::Acquire) {
            return;
        }
        self.shared.health.set_trouble(Some(format!(
            "cannot read this relay's heartbeats back from Kafka at {} within --kafka-peer-timeout; its rooms ended",
            self.shared.topic
        )));
        self.shared.tell_all(|| Event::Lost(LostWhy::ThisRelay));
    }

    fn on_record(
        &mut self,
        partition: i32,
        offset: i64,
        timestamp: Timestamp,
        key: Option<Bytes>,
        value: Option<Bytes>,
    ) {
        let Some(p) = usize::try_from(partition).ok().filter(|p| *p < self.logs.len()) else { return };
        if offset < self.next[p] {
            self.log_went_back(p, offset);
        }
        self.next[p] = offset + 1;
        let log = &mut self.logs[p];
        // A record without this cluster's tag for this partition and key is not a relay's: every
        // relay drops it alike (and counts it), so the logs stay the same everywhere.
        let Some(value) = value.and_then(|v| self.shared.open(partition, key.as_deref(), v)) else { return };
        let Some(value) = wire::decode(value) else {
            self.shared.metrics.upstream.foreign_messages.inc();
            return;
        };
        let room: Option<Room> = key.as_deref().and_then(|k| k.try_into().ok());
        let room = match (&value.body, room) {
            (Body::Alive | Body::Snapshot { .. }, _) => [0; 16],
            (_, Some(room)) => room,
            (_, None) => {
                self.shared.metrics.upstream.foreign_messages.inc();
                return;
            }
        };
        let at = match timestamp {
            Timestamp::LogAppendTime(t) => t,
            Timestamp::CreateTime(t) => {
                if !self.warned_clock {
                    self.warned_clock = true;
                    tracing::warn!(
                        topic = %self.shared.topic,
                        "records carry the producers' clocks, not the brokers' (set message.timestamp.type=LogAppendTime)"
                    );
                }
                t
            }
            Timestamp::NotAvailable => i64::MIN,
        };
        let outcomes = log.apply(at, value.record(room));
        for outcome in outcomes {
            self.dispatch(outcome, &value);
        }
        if value.body == Body::Alive && value.seat.relay == self.shared.relay {
            self.heard_own_heartbeat();
        }
    }

    /// The broker served an offset already read: it lost records it had acknowledged (a broker
    /// that keeps its log in memory, restarted). What the relays derived from them cannot be
    /// trusted, so this relay's rooms end with 4011 and the partition's state starts over from
    /// the log as it is now.
    fn log_went_back(&mut self, p: usize, offset: i64) {
        tracing::warn!(
            partition = p,
            offset,
            expected = self.next[p],
            "the Kafka broker lost records it had acknowledged; ending this relay's rooms"
        );
        self.shared.metrics.upstream.reassignments.inc();
        self.logs[p] = Partition::new(self.ttl);
        self.exact[p] = false;
        self.shared.tell_all(|| Event::Lost(LostWhy::ThisRelay));
    }

    /// This relay's heartbeat came back: the log is readable, and caught up to it.
    fn heard_own_heartbeat(&mut self) {
        self.last_own = Some(Instant::now());
        let down = self.shared.health.down.swap(false, Ordering::AcqRel);
        if !self.shared.health.ready.load(Ordering::Acquire) {
            // Ready for the first time, or again after an outage that ended this relay's rooms.
            if self.was_ready {
                self.shared.metrics.upstream.reconnects.inc();
            }
            self.was_ready = true;
            self.shared.health.set_trouble(None);
        } else if down {
            // Every broker was reported down, and the log is readable again within the bound.
            self.shared.metrics.upstream.reconnects.inc();
        }
    }

    fn mine(&self, seat: &Seat) -> bool {
        seat.relay == self.shared.relay
    }

    /// Hands `outcome` to the seats of this relay it concerns.
    fn dispatch(&self, outcome: Outcome<Room>, value: &Value) {
        let shared = &self.shared;
        match outcome {
            Outcome::Waiting { seat, .. } if self.mine(&seat) => shared.tell(seat.n, Event::Waiting),
            Outcome::Paired { first, second, .. } => {
                if self.mine(&second) {
                    shared.tell(second.n, Event::Paired { partner: first });
                }
                if self.mine(&first) {
                    shared.tell(first.n, Event::Paired { partner: second });
                }
            }
            Outcome::Burnt { seat, .. } if self.mine(&seat) => shared.tell(seat.n, Event::Burnt),
            Outcome::Full { seat, .. } if self.mine(&seat) => {
                shared.metrics.upstream.slot_conflicts.inc();
                shared.tell(seat.n, Event::Full);
            }
            Outcome::Deliver { to, .. } if self.mine(&to) => match &value.body {
                Body::Frames { first, frames } => {
                    shared.metrics.upstream.frames_in.inc_by(frames.len() as u64);
                    shared.tell(to.n, Event::Frames { first: *first, frames: frames.clone() });
                }
                Body::Ack { next } => shared.tell(to.n, Event::Ack { next: *next }),
                _ => {}
            },
            Outcome::Left { partner: Some(p), .. } if self.mine(&p) => {
                if let Body::Leave { sent } = value.body {
                    shared.tell(p.n, Event::Left { sent });
                }
            }
            Outcome::Lost { seat, partner, .. } => {
                if self.mine(&seat) {
                    shared.tell(seat.n, Event::Lost(LostWhy::ThisRelay));
                }
                if let Some(p) = partner.filter(|p| self.mine(p)) {
                    shared.tell(p.n, Event::Lost(LostWhy::PartnerRelay));
                }
            }
            _ => {}
        }
    }
}

/// The largest snapshot written (a record must stay under the brokers' 1 MiB default).
const MAX_SNAPSHOT: usize = 900 * 1024;

/// Where partition `p`'s state can be rebuilt from: the newest snapshot in the log (its state,
/// and the offset after what it covers), else an empty state at the start of the log. The third
/// value says whether that state is exact: not when retention deleted the log's start and no
/// snapshot is left.
fn rebuild(shared: &Shared, config: &ClientConfig, p: i32, ttl: i64) -> (Partition<Room>, i64, bool) {
    use rdkafka::consumer::BaseConsumer;
    let empty = || Partition::new(ttl);
    let Ok(scanner) = config.create::<BaseConsumer>() else { return (empty(), 0, true) };
    let Ok((low, high)) = scanner.fetch_watermarks(&shared.topic, p, super::OP_TIMEOUT) else {
        return (empty(), 0, true);
    };
    let mut newest: Option<(u64, Bytes)> = None;
    let mut list = TopicPartitionList::new();
    if high > low
        && list.add_partition_offset(&shared.topic, p, Offset::Offset(low)).is_ok()
        && scanner.assign(&list).is_ok()
    {
        let deadline = std::time::Instant::now() + super::OP_TIMEOUT * 6;
        let mut at = low;
        while at < high && std::time::Instant::now() < deadline {
            let Some(Ok(m)) = scanner.poll(std::time::Duration::from_millis(100)) else { continue };
            at = m.offset() + 1;
            if m.payload().and_then(|v| v.first()) != Some(&b's') {
                continue;
            }
            if let Some(Value { body: Body::Snapshot { next, state }, .. }) =
                m.payload().map(Bytes::copy_from_slice).and_then(|v| shared.open(p, None, v)).and_then(wire::decode)
            {
                newest = Some((next, state));
            }
        }
        if at < high {
            tracing::warn!(partition = p, "could not read the log to its end in time looking for a snapshot");
        }
    }
    if let Some((next, state)) = newest {
        if let (Some(log), Ok(from)) = (Partition::restore(ttl, &state), i64::try_from(next)) {
            if from >= low {
                shared.metrics.upstream.reassignments.inc();
                return (log, from, true);
            }
        }
    }
    if low > 0 {
        tracing::warn!(
            partition = p,
            "the log's first records were deleted by retention and no snapshot is left: rooms older than \
             --kafka-retention may be misjudged by this relay"
        );
    }
    (empty(), low, low == 0)
}
