//! pipedream-secrets-operator: keeps Pipedream connected-account credentials fresh in Kubernetes Secrets.
#![forbid(unsafe_code)]

pub mod access;
pub mod cli;
pub mod commands;
pub mod controller;
pub mod crd;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod pipedream;
pub mod reason;
pub mod schedule;
pub mod secret;
pub mod shard;
pub mod simulate;
pub mod status_view;
pub mod telemetry;
pub mod template;
