//! lease-sync keeps the residents of shared apartment buildings in sync with OpenApp.
//!
//! A property-management system posts a signed webhook when a lease is signed or ends;
//! lease-sync verifies it, queues one job per resident in Redis, and workers add or remove
//! that resident as an OpenApp building user.
//!
//! # Layout
//! * [`config`]: the TOML configuration and its environment overrides, a module per section.
//! * [`event`]: the lease event and its validation (pure domain, no I/O).
//! * [`signature`]: webhook signature schemes (pure).
//! * [`http`]: the webhook listener (the only axum code).
//! * [`resident`]: resident state and the version order of lease events (pure).
//! * [`personal`]: personal data masked for display (pure).
//! * [`history`]: each resident's history (pure): what was done about them, and why.
//! * [`access`]: when access starts and ends for calendar dates in a property's time zone.
//! * [`identity`]: emails resolved to OpenApp users, and conflicts.
//! * [`refresh`]: reading a Buildium lease again and folding what it says.
//! * [`resolve`]: native events naming residents by email, resolved and then folded.
//! * [`sources`]: kinds of senders (Buildium: its webhook events and leases).
//! * [`integrations`]: operator actions on one OpenApp integration (pause, resume).
//! * [`leases`]: operator actions on one lease (find its holders, reset it).
//! * [`reconcile`]: comparing a file of active leases with OpenApp, and applying the plan.
//! * [`queue`]: delivery jobs in Redis, in apalis-redis's layout.
//! * [`dead_letters`]: deliveries given up, replayed or purged, and the audit trail.
//! * [`worker`]: apalis workers and their supervisor.
//! * [`openapp`]: the OpenApp client and the classification of its answers.
//! * [`outbound`]: the only module that knows reqwest: HTTP clients, bounded answers,
//!   transport errors.
//! * [`app`]: wiring and shutdown; [`cli`]: the command line (less `sandbox-openapp`: the
//!   OpenApp emulator is the `lease-sync-sandbox` crate, which only the binary links);
//!   [`telemetry`]: logs.
//! * [`fd_limit`]: the open-file limit, raised at startup and sizing the connection caps.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod access;
pub mod app;
pub mod cli;
pub mod config;
pub mod dead_letters;
pub mod event;
pub mod fd_limit;
pub mod history;
pub mod http;
pub mod identity;
pub mod integrations;
pub mod leases;
pub mod openapp;
pub mod outbound;
pub mod personal;
pub mod queue;
pub mod reconcile;
pub mod refresh;
pub mod resident;
pub mod resolve;
pub mod retry;
pub mod signature;
pub mod sources;
pub mod telemetry;
pub mod worker;
