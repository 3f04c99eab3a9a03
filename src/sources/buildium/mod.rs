//! Buildium, the property-management system with public lease webhooks.
//!
//! Its webhooks are thin (`{"EventName": "Lease.Updated", …, "LeaseId": 501}`), unordered and
//! dropped after three retries, so ingest only queues a *refresh*; workers read the lease from
//! Buildium's API ([`client`]) and fold what it says ([`lease`]); a scheduled pull is the
//! safety net.

pub mod client;
pub mod lease;
pub mod webhook;
