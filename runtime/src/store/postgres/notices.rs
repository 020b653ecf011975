//! Notices between the processes sharing one database: this store's committed changes go out
//! with NOTIFY and other processes' come in through LISTEN, encoded by `notice_codec`. The
//! store only queues its notices ([`PgStore::notify`](super::PgStore)); the [`PgRelay`] that
//! sends and receives them is run by whoever owns the process (`crate::notices::Relay`).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::notice_codec;
use crate::store::{Notice, NoticeRelay, Result};

/// The most notices one NOTIFY statement carries.
const BATCH: usize = 4096;

/// Relays one store's notices: its queue of committed changes out, other processes' in.
pub(super) struct PgRelay {
    /// For the listener's own connection.
    pub(super) pool: PgPool,
    /// For the NOTIFY statements (one of the connections every job goes through).
    pub(super) hot: PgPool,
    pub(super) channel: String,
    /// Marks this store's notices, so that the listener skips their echo.
    pub(super) origin: String,
    /// This store's committed changes, to send.
    pub(super) outbound: mpsc::UnboundedReceiver<Notice>,
    /// This process's subscribers, who hear other processes' changes.
    pub(super) forward: broadcast::Sender<Notice>,
    pub(super) listener: Option<PgListener>,
}

#[async_trait]
impl NoticeRelay for PgRelay {
    async fn listen(&mut self) -> Result<()> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.channel).await?;
        self.listener = Some(listener);
        Ok(())
    }

    async fn run(mut self: Box<Self>, stop: CancellationToken) {
        let listener = self.listener.take();
        let PgRelay {
            hot,
            channel,
            origin,
            outbound,
            forward,
            ..
        } = *self;
        tokio::join!(
            send(&hot, &channel, &origin, outbound, &stop),
            receive(listener, &origin, &forward, &stop),
        );
    }
}

/// Sends the queued notices, as many as have queued up, with one statement, until `stop`; then
/// sends what is still queued.
///
/// Postgres serializes the commits of all transactions that NOTIFY, across every session of the
/// server: each holds a global lock from its NOTIFY until after its commit, WAL flush included
/// (`Lock:object` in `pg_stat_activity`). Notified inside the writing transactions,
/// submissions, claims and completions would queue up behind one another's flushes. Here the
/// notices leave the writing transactions: one small transaction sends a batch of them, and
/// commits without waiting for its flush (a notice is a wake-up, not data: one lost in a
/// server crash is covered by the pollers, as when the listener reconnects).
async fn send(
    pool: &PgPool,
    channel: &str,
    origin: &str,
    mut rx: mpsc::UnboundedReceiver<Notice>,
    stop: &CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let got = tokio::select! {
            _ = stop.cancelled() => break,
            got = rx.recv_many(&mut batch, BATCH) => got,
        };
        if got == 0 {
            return;
        }
        notify(pool, channel, origin, &mut batch).await;
    }
    // Stopping: what was committed before the stop still goes out.
    rx.close();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        notify(pool, channel, origin, &mut batch).await;
    }
}

/// Sends `batch` (emptied) with one NOTIFY statement; `JobsAvailable` goes once.
async fn notify(pool: &PgPool, channel: &str, origin: &str, batch: &mut Vec<Notice>) {
    let mut available = false;
    batch.retain(|n| {
        !matches!(n, Notice::JobsAvailable) || !std::mem::replace(&mut available, true)
    });
    let parts = notice_codec::encode(origin, batch.drain(..));
    if let Err(e) = sqlx::query(include_str!("notify.sql"))
        .bind(channel)
        .bind(&parts)
        .execute(pool)
        .await
    {
        crate::throttle::warn(format!("cannot NOTIFY: {e}"));
    }
}

/// Forwards the notices of other stores (not `origin`'s own echo) to `forward`, until `stop`.
async fn receive(
    listener: Option<PgListener>,
    origin: &str,
    forward: &broadcast::Sender<Notice>,
    stop: &CancellationToken,
) {
    let Some(mut listener) = listener else {
        return;
    };
    loop {
        let heard = tokio::select! {
            _ = stop.cancelled() => return,
            heard = listener.recv() => heard,
        };
        match heard {
            Ok(n) => {
                // This store's own notices were delivered when they were sent.
                for notice in notice_codec::decode(n.payload(), origin) {
                    let _ = forward.send(notice);
                }
            }
            Err(e) => {
                // PgListener reconnects by itself on the next recv; wake everyone so nothing
                // waits on a notice lost in between.
                crate::throttle::warn(format!("postgres listener: {e}"));
                let _ = forward.send(Notice::JobsAvailable);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}
