use std::time::Duration;

use thiserror::Error;

/// Why a connection's credentials (OAuth client id and secret, or API key) could not be loaded from their
/// Kubernetes Secret. Names the Secret and key, never a value.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CredentialsError {
    /// The connection sets both or neither of `oauth` and `apiKey`.
    #[error("spec.auth must set exactly one of oauth or apiKey")]
    AuthMethod,
    /// `oauth` has neither `clientId` nor `clientIdSecretRef`.
    #[error("spec.auth.oauth needs clientId or clientIdSecretRef")]
    NoClientId,
    /// A cluster connection's Secret ref without its namespace.
    #[error("Secret ref {0} has no namespace")]
    NoNamespace(String),
    /// Reading the Secret failed (the API server's status, not its body).
    #[error("reading Secret {secret}: {summary}")]
    Read {
        /// `namespace/name`.
        secret: String,
        /// What the API server said.
        summary: String,
    },
    /// The Secret does not exist.
    #[error("Secret {0} not found")]
    NotFound(String),
    /// The key is missing, not UTF-8, or empty.
    #[error("Secret {secret} key {key} is {problem}")]
    Key {
        /// `namespace/name`.
        secret: String,
        /// The key.
        key: String,
        /// `missing`, `not UTF-8`, `empty`.
        problem: &'static str,
    },
    /// The loader returned the other mode's material.
    #[error("expected {0}")]
    WrongMaterial(&'static str),
}

/// What went wrong talking to Pipedream, by the failed action. Messages never hold credential values.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PipedreamError {
    /// The OAuth client secret or API key could not be read from its Kubernetes Secret.
    #[error("cannot load connection credentials: {0}")]
    LoadCredentials(CredentialsError),
    /// Pipedream rejected the OAuth client credentials or API key (401/403).
    #[error("Pipedream rejected the connection's credentials (HTTP {status}) on {endpoint}")]
    Unauthorized { endpoint: &'static str, status: u16 },
    /// Pipedream refused this connection access to one account (403).
    #[error("Pipedream refused access (HTTP {status}) on {endpoint}")]
    Forbidden { endpoint: &'static str, status: u16 },
    /// The account does not exist for these credentials (404, or 400 "record not found").
    #[error("account not found (HTTP {status}){}", fmt_msg(.message))]
    NotFound {
        status: u16,
        message: Option<String>,
    },
    /// Pipedream answered 429.
    // No countdown in the text: it reaches status, and a message that changes every second rewrites it.
    #[error("rate limited by Pipedream")]
    RateLimited { retry_after: Option<Duration> },
    /// Any other HTTP error status.
    #[error("Pipedream answered HTTP {status} on {endpoint}{}", fmt_msg(.message))]
    Status {
        endpoint: &'static str,
        status: u16,
        message: Option<String>,
    },
    /// Connect, TLS, timeout or body-read failure.
    #[error("request to Pipedream failed on {endpoint}: {message}")]
    Transport {
        endpoint: &'static str,
        message: String,
    },
    /// A 2xx answer we cannot use.
    #[error("malformed answer from Pipedream on {endpoint}: {message}")]
    Malformed {
        endpoint: &'static str,
        message: String,
    },
}

fn fmt_msg(m: &Option<String>) -> String {
    m.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
}

impl PipedreamError {
    /// Whether a quick retry inside the same sync may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transport { .. })
            || matches!(self, Self::Status { status, .. } if *status >= 500 || *status == 408)
    }
}
