//! pipedream-secrets-operator: keeps Pipedream connected-account credentials fresh in Kubernetes Secrets.
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
mod controller;
pub mod crd;
pub mod http;
pub mod kubectl;
pub mod metrics;
pub mod pipedream;
pub mod rules;
pub mod secret;
pub mod simulate;
mod status_view;
mod telemetry;

use rules::{access, reason};
pub use rules::{identity, schedule, shard, template};
