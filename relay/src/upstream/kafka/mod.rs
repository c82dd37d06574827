//! The Kafka upstream (in progress): relays that share rooms through a Kafka log.
//!
//! So far this holds its core, [`log`]: the room state every relay derives from the same ordered
//! records, which is what makes arbitration sound without heartbeats alone. The broker client
//! (rdkafka), the topics and the wiring into [`Upstream`](super::Upstream) come next; until then
//! `--upstream kafka` does not exist.

pub mod log;
