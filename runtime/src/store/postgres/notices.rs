//! Notices between nodes: this store's committed changes go out with NOTIFY (`send`), and
//! other nodes' come in through LISTEN (`listen`), encoded by `notice_codec`.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use super::notice_codec;
use crate::store::{Notice, Result};

/// Sends the notices of committed changes, as many as have queued up, with one statement, until
/// the store (the channel's sender) is dropped.
///
/// Postgres serializes the commits of all transactions that NOTIFY, across every session of the
/// server: each holds a global lock from its NOTIFY until after its commit, WAL flush included
/// (`Lock:object` in `pg_stat_activity`). Notified inside the writing transactions,
/// submissions, claims and completions would queue up behind one another's flushes. Here the
/// notices leave the writing transactions: one small transaction sends a batch of them, and
/// commits without waiting for its flush (a notice is a wake-up, not data: one lost in a
/// server crash is covered by the pollers, as when the listener reconnects).
pub(super) async fn send(
    pool: PgPool,
    channel: String,
    origin: String,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Notice>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        let mut available = false;
        batch.retain(|n| {
            !matches!(n, Notice::JobsAvailable) || !std::mem::replace(&mut available, true)
        });
        let parts = notice_codec::encode(&origin, batch.drain(..));
        if let Err(e) = sqlx::query(include_str!("notify.sql"))
            .bind(&channel)
            .bind(&parts)
            .execute(&pool)
            .await
        {
            crate::throttle::warn(format!("cannot NOTIFY: {e}"));
        }
    }
}

/// Listens on `channel` and forwards the notices of other stores (not `origin`'s own echo) to
/// `forward`, until `stop`.
pub(super) async fn listen(
    pool: &PgPool,
    channel: &str,
    origin: String,
    forward: broadcast::Sender<Notice>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    tokio::spawn(async move {
        loop {
            let heard = tokio::select! {
                _ = stop.cancelled() => return,
                heard = listener.recv() => heard,
            };
            match heard {
                Ok(n) => {
                    // This store's own notices were delivered when they were sent.
                    for notice in notice_codec::decode(n.payload(), &origin) {
                        let _ = forward.send(notice);
                    }
                }
                Err(e) => {
                    // PgListener reconnects by itself on the next recv; wake everyone so
                    // nothing waits on a notice lost in between.
                    crate::throttle::warn(format!("postgres listener: {e}"));
                    let _ = forward.send(Notice::JobsAvailable);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    Ok(())
}
