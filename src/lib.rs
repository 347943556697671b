//! pipedream-secrets-operator: keeps Pipedream connected-account credentials fresh in Kubernetes Secrets.
#![forbid(unsafe_code)]

mod access;
pub mod cli;
pub mod commands;
mod controller;
pub mod crd;
pub mod http;
pub mod identity;
pub mod kubectl;
pub mod metrics;
pub mod pipedream;
mod reason;
pub mod schedule;
pub mod secret;
pub mod shard;
pub mod simulate;
mod status_view;
mod telemetry;
pub mod template;
