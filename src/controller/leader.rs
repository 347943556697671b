//! Lease-based leader election (kube-lease-manager): wait to lead, notice when leadership is lost, release the
//! Lease on shutdown so a standby takes over at once.

use futures::future::{BoxFuture, Shared};
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Held while this replica leads.
pub struct Leadership {
    rx: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Leadership {
    /// Resolves when the Lease is lost.
    pub async fn lost(&mut self) {
        loop {
            if self.rx.changed().await.is_err() || !*self.rx.borrow_and_update() {
                warn!("leadership lost");
                return;
            }
        }
    }

    /// Give the Lease up (graceful shutdown).
    pub async fn release(self) {
        drop(self.rx);
        match self.task.await {
            Ok(Ok(_)) => info!("released the leader-election Lease"),
            Ok(Err(e)) => warn!(error = %e, "releasing the Lease failed"),
            Err(e) => warn!(error = %e, "the leader-election task failed"),
        }
    }
}

/// Block until this replica holds the Lease, or `None` if shutdown came first.
pub async fn acquire(
    client: Client,
    namespace: &str,
    lease: &str,
    identity: &str,
    duration_secs: u64,
    mut shutdown: Shared<BoxFuture<'static, ()>>,
) -> Result<Option<Leadership>, String> {
    let manager = LeaseManagerBuilder::new(client, lease)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration_secs)
        .with_grace((duration_secs / 3).max(1))
        .with_field_manager(crate::crd::MANAGER)
        .build()
        .await
        .map_err(|e| format!("leader election: cannot use Lease {namespace}/{lease}: {e}"))?;
    let (mut rx, task) = manager.watch().await;
    info!(lease = %format!("{namespace}/{lease}"), %identity, "waiting to become leader");
    while !*rx.borrow_and_update() {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Err("leader election stopped unexpectedly".into());
                }
            }
            _ = &mut shutdown => {
                Leadership { rx, task }.release().await;
                return Ok(None);
            }
        }
    }
    info!(%identity, "became leader");
    Ok(Some(Leadership { rx, task }))
}
