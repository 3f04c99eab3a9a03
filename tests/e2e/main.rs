//! End-to-end tests: real redis-server, real HTTP on port 0, the sandbox OpenApp over HTTP,
//! and the real binary where processes matter (kill -9, separate roles, signals, CLI).

mod admin_api;
mod batching;
mod browser;
mod buildium;
mod buildium_client;
mod cli;
mod cluster;
mod connections;
mod console;
mod convergence;
mod delivery;
mod hardening;
mod identity;
mod ingest;
mod observability;
mod operations;
mod operator_cli;
mod reconcile;
mod replication;
mod resilience;
mod retries;
mod safety;
mod support;
mod upgrade;
