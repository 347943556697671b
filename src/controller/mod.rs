//! The controllers: ConnectedAccounts (one pass per write: [`reconcile`]), connection status ([`connection`]),
//! and their wiring ([`watches`]).

mod build;
mod cached;
mod connection;
mod context;
mod credentials;
mod error;
mod fetch;
mod hosts;
mod leader;
mod memory;
mod outcome;
mod reconcile;
mod resolve;
mod restart;
mod status;
mod subject;
mod targets;
mod watches;

use crate::rules::{plan, spec};

pub use context::{Clock, Context, ObjectState, Settings};
pub use error::Error;
pub use hosts::AllowedHosts;
pub use reconcile::let_go;
pub use resolve::client_parts;
pub use watches::{LeaderElection, RunConfig, RunError, run};

/// The number of a reconcile pass in this process, for its log span: with the object's name it tells one pass's
/// lines from the next one's.
fn next_pass_id() -> u64 {
    static PASSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    PASSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
pub(crate) mod tests;
