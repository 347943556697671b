//! The controller's own failure: the Kubernetes API failed, so the pass ends without a status update.

/// Errors that end a reconcile without a status update: the Kubernetes API itself failed. Named after the failed
/// action; the snake-case name is the `error` label of `reconcile_errors_total`.
#[derive(Debug, thiserror::Error, strum::IntoStaticStr, strum::VariantNames)]
#[strum(serialize_all = "snake_case")]
pub enum Error {
    /// Reading the target Secret failed.
    #[error("reading Secret failed: {0}")]
    ReadSecret(#[source] kube::Error),
    /// Writing the target Secret failed.
    #[error("writing Secret failed: {0}")]
    WriteSecret(#[source] kube::Error),
    /// Writing status failed.
    #[error("writing status failed: {0}")]
    WriteStatus(#[source] kube::Error),
    /// Reading another ConnectedAccount (a Merge writer) failed.
    #[error("reading ConnectedAccount failed: {0}")]
    ReadConnectedAccount(#[source] kube::Error),
    /// Reading a namespace for access rules failed.
    #[error("reading namespace failed: {0}")]
    ReadNamespace(#[source] kube::Error),
    /// Removing the ownerReference of a retained Secret on deletion failed.
    #[error("releasing the retained Secret failed: {0}")]
    ReleaseSecret(#[source] kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("updating the finalizer failed: {0}")]
    Finalizer(#[source] kube::Error),
    /// Decoding the cached object failed (the operator encoded it: a bug).
    #[error("decoding the cached ConnectedAccount failed: {0}")]
    DecodeCached(#[source] serde_json::Error),
}

impl Error {
    /// Bounded metric label.
    pub fn metric_label(&self) -> &'static str {
        self.into()
    }

    /// Every metric label, for counters that exist from 0.
    pub fn labels() -> &'static [&'static str] {
        <Self as strum::VariantNames>::VARIANTS
    }
}
