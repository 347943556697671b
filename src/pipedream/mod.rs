//! Pipedream REST client following `pipedream-api.md`.

mod client;
mod error;
mod types;

pub use client::*;
pub use error::{CredentialsError, PipedreamError};
pub use types::*;
