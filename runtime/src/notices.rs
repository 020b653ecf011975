//! The relay of the store's notices between the processes that share its database, as a
//! service of the process: `serve` and `worker` start it once the store is open and stop it
//! last, after the node and the API, so that the notices of their final changes still go out.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{JobStore, StoreError};

/// A running relay (see [`JobStore::relay`]); a store with none gives an idle handle.
/// Dropping it does not stop the relay; call [`Relay::shutdown`].
pub struct Relay {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying `store`'s notices. Returns once it listens: a change another process
    /// commits after this is heard by this one's subscribers.
    pub async fn start(store: &dyn JobStore) -> Result<Relay, StoreError> {
        let stop = CancellationToken::new();
        let task = match store.relay() {
            Some(mut relay) => {
                relay.listen().await?;
                Some(tokio::spawn(relay.run(stop.clone())))
            }
            None => None,
        };
        Ok(Relay { stop, task })
    }

    /// Stops listening, sends the notices already queued, and returns when that is done.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Some(task) = self.task
            && let Err(e) = task.await
        {
            tracing::warn!("the notice relay ended badly: {e}");
        }
    }
}
