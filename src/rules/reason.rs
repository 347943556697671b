//! Ready reasons (stable strings) and the failures that lead to them.

use std::time::Duration;

use crate::pipedream::PipedreamError;
use crate::schedule::FailureClass;

/// A Ready condition reason. The strings are API: alerts and scripts key on them (the variant name is the string).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumIter,
    strum::EnumCount,
    strum::EnumString,
)]
pub enum Reason {
    /// The Secret holds fresh credentials.
    SecretSynced,
    /// The spec is invalid in a way the CRD schema cannot express.
    InvalidSpec,
    /// The referenced connection does not exist.
    ConnectionNotFound,
    /// The connection exists but cannot be used (its Secret is missing, a key is absent).
    ConnectionNotReady,
    /// The connection's access rules do not admit this namespace or account.
    AccessDenied,
    /// Pipedream rejected the connection's OAuth client or API key.
    AuthFailed,
    /// Pipedream does not know the account.
    AccountNotFound,
    /// Pipedream marks the account unhealthy.
    AccountUnhealthy,
    /// Pipedream marks the account dead.
    AccountDead,
    /// The account has no credentials for us (Pipedream-managed OAuth app, or empty).
    CredentialsUnavailable,
    /// Pipedream answered 429.
    RateLimited,
    /// Any other Pipedream failure (5xx, network, timeout, malformed answer).
    UpstreamError,
    /// The target Secret belongs to something else.
    SecretConflict,
    /// Pipedream returned credentials that have already expired (not `Expired`: that is a condition type).
    StaleCredentials,
    /// The API server refused the Secret write (a permission or a limit, not a transient failure).
    SecretWriteFailed,
}

impl Reason {
    /// The stable string.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every reason, in documentation order.
    pub fn all() -> impl Iterator<Item = Reason> {
        <Self as strum::IntoEnumIterator>::iter()
    }

    /// How a failure with this reason is retried.
    pub fn class(self) -> FailureClass {
        match self {
            Self::RateLimited
            | Self::UpstreamError
            | Self::StaleCredentials
            | Self::SecretSynced => FailureClass::Transient,
            Self::AccountUnhealthy => FailureClass::Unhealthy,
            _ => FailureClass::Permanent,
        }
    }

    /// Failures a change to the connection can fix: retried as soon as the connection changes.
    pub fn about_connection(self) -> bool {
        matches!(
            self,
            Self::ConnectionNotFound
                | Self::ConnectionNotReady
                | Self::AccessDenied
                | Self::AuthFailed
        )
    }
}

/// A sync that could not complete. The message names the field or object at fault and never holds secrets.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SyncFailure {
    /// The Ready reason.
    pub reason: Reason,
    /// Human-readable cause.
    pub message: String,
    /// Server-imposed wait (429).
    pub retry_after: Option<Duration>,
    /// Exact retry delay chosen by the reconciler (replaces the error backoff).
    pub retry_in: Option<Duration>,
}

impl SyncFailure {
    /// A failure with a reason and message.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            retry_after: None,
            retry_in: None,
        }
    }
}

impl From<PipedreamError> for SyncFailure {
    fn from(e: PipedreamError) -> Self {
        let reason = match &e {
            PipedreamError::LoadCredentials(_) => Reason::ConnectionNotReady,
            PipedreamError::Unauthorized { .. } | PipedreamError::Forbidden { .. } => {
                Reason::AuthFailed
            }
            PipedreamError::NotFound { .. } => Reason::AccountNotFound,
            PipedreamError::RateLimited { .. } => Reason::RateLimited,
            PipedreamError::Status { .. }
            | PipedreamError::Transport { .. }
            | PipedreamError::Malformed { .. } => Reason::UpstreamError,
        };
        let retry_after = match &e {
            PipedreamError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        Self {
            reason,
            message: e.to_string(),
            retry_after,
            retry_in: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason the code can report is in the README's reason table and in the CRD's description of
    /// `status.conditions` (which `kubectl explain` shows); `SecretWriteFailed` once was in neither.
    #[test]
    fn every_reason_is_documented_in_the_readme_table_and_the_crd() {
        let readme = include_str!("../../README.md");
        let crd = crate::crd::all_crds()
            .iter()
            .map(|c| crate::crd::crd_yaml(c).unwrap_or_default())
            .collect::<String>();
        for r in Reason::all() {
            let s = r.as_str();
            assert!(
                readme.contains(&format!("\n| `{s}` |")),
                "{s} is not a row of the README's reason table"
            );
            assert!(
                crd.contains(&format!("`{s}`")),
                "{s} is not in the CRD's description"
            );
        }
    }
}
