//! Wake-ups by pub/sub: one subscription connection per store multiplexes every waiter of
//! this process.
//!
//! A release (or clear, or a lease that was shortened) publishes on the name's channel from
//! inside its script. An actor task owns the subscription connection: the first waiter of a
//! name subscribes its channel (and [`Store::subscribe`](crate::store::Store::subscribe)
//! returns once the server confirmed), the last one leaving unsubscribes it (the
//! [`WakeHub`]'s idle hook; 250 ms later, unless a waiter came back, so a hot name is not
//! subscribed anew for every turn), and a message wakes that name's waiters only. When the
//! connection drops, the actor reconnects with backoff, subscribes every channel that still
//! has waiters, and wakes every waiter, because messages sent while it was away are lost.
//! On a cluster, the loss of any node's connection counts as a drop: the new connection
//! finds the channels' current masters, so waiters follow a failover.
//!
//! A single node uses plain `SUBSCRIBE`/`PUBLISH` on a RESP2 pub/sub connection (redis-rs
//! offers `SSUBSCRIBE` only on cluster connections; on one node both cost the same); a
//! cluster uses sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`) over a RESP3 cluster connection,
//! so a message travels only within the shard that owns the lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use redis::{PushInfo, PushKind, RedisResult};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::name::{LockName, Namespace};
use crate::store::{PushedGrant, WakeHub, Wakeups, lock};

use super::keys::Keys;

/// How long a name's channels stay subscribed after its last waiter in this process left.
const LINGER: Duration = Duration::from_millis(250);

/// How the actor reaches the server.
#[derive(Clone)]
pub(super) enum Source {
    /// A single node: a dedicated RESP2 pub/sub connection.
    Single(Box<redis::Client>),
    /// A cluster: builds a RESP3 cluster connection whose pushes come to the given sender.
    Cluster(Arc<dyn Fn(PushSink) -> RedisResult<redis::cluster::ClusterClient> + Send + Sync>),
}

/// Where a cluster connection's pushes go.
pub(super) type PushSink = Arc<dyn Fn(PushInfo) -> std::result::Result<(), ()> + Send + Sync>;

enum Command {
    Subscribe {
        channel: String,
        ns: Namespace,
        name: LockName,
        done: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        channel: String,
        ns: Namespace,
        name: LockName,
    },
}

enum Event {
    Disconnected,
}

/// Channel → the name it wakes, for every channel subscribed on the server. The actor
/// writes it; the connection's reader delivers messages with it directly, so a grant
/// reaches its waiter without a hop through the actor.
type Channels = Arc<std::sync::Mutex<HashMap<String, (Namespace, LockName)>>>;

/// Hands a message on a lock's channel to this process's waiters: a grant pushed to one of
/// them (`id fence µs`), or a wake-up (an empty payload) for every waiter of the name.
fn deliver(channels: &Channels, hub: &std::sync::Weak<WakeHub>, channel: &str, payload: &str) {
    let Some(hub) = hub.upgrade() else { return };
    let Some((ns, name)) = lock(channels).get(channel).cloned() else {
        return;
    };
    match PushedGrant::parse(payload) {
        // A grant to a waiter of another process wakes nobody here: the lock is held again.
        Some((id, grant)) => {
            hub.grant(&ns, &name, id, grant);
        }
        None => hub.notify(&ns, &name),
    }
}

/// The store's side of the actor.
pub(super) struct Subscriptions {
    commands: mpsc::UnboundedSender<Command>,
    hub: Arc<WakeHub>,
    prefix: String,
    /// This store's inbox: grants pushed to its waiters come on a name's channel suffixed
    /// with `:<inbox>`, subscribed together with the channel.
    inbox: String,
    /// The channels the actor has subscribed on the server.
    channels: Channels,
    /// How many subscription connections the actor has opened (for tests and metrics).
    pub(super) connections: Arc<AtomicU64>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("names", &self.hub.names())
            .finish_non_exhaustive()
    }
}

impl Subscriptions {
    /// Starts the actor on the current runtime.
    /// `renewals` (cluster): changes when the store's command connection was built anew
    /// after stalled calls; the subscription connection is then built anew as well, since
    /// its channels' masters may have changed without any of its connections dropping.
    pub(super) fn start(
        source: Source,
        renewals: Option<tokio::sync::watch::Receiver<u64>>,
        prefix: String,
        timeout: Duration,
    ) -> Subscriptions {
        let (tx, rx) = mpsc::unbounded_channel::<Command>();
        let idle_tx = tx.clone();
        let idle_prefix = prefix.clone();
        let hub = Arc::new(WakeHub::on_idle(Arc::new(move |ns, name| {
            let channel = Keys::new(&idle_prefix, ns.as_str()).channel(name.as_str());
            let unsubscribe = Command::Unsubscribe {
                channel,
                ns: ns.clone(),
                name: name.clone(),
            };
            // A name that is waited for again soon (a hot lock whose holders take turns)
            // keeps its subscription: the actor unsubscribes only if it still has no
            // waiters after a while.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let tx = idle_tx.clone();
                    rt.spawn(async move {
                        tokio::time::sleep(LINGER).await;
                        let _ = tx.send(unsubscribe);
                    });
                }
                Err(_) => {
                    let _ = idle_tx.send(unsubscribe);
                }
            }
        })));
        let connections = Arc::new(AtomicU64::new(0));
        let inbox = crate::Token::new().grant_id();
        let channels = Channels::default();
        let actor = Actor {
            inbox: inbox.clone(),
            channels: channels.clone(),
            source,
            renewals,
            hub: Arc::downgrade(&hub),
            timeout,
            connections: connections.clone(),
        };
        tokio::spawn(actor.run(rx));
        Subscriptions {
            commands: tx,
            hub,
            prefix,
            inbox,
            channels,
            connections,
        }
    }

    /// This store's inbox (see the field).
    pub(super) fn inbox(&self) -> &str {
        &self.inbox
    }

    /// Subscribes to `name`'s wake-ups; returns once the server confirmed the subscription.
    pub(super) async fn subscribe(&self, ns: &Namespace, name: &LockName) -> Result<Wakeups> {
        let (wakeups, _first) = self.hub.subscribe_first(ns, name);
        let channel = Keys::new(&self.prefix, ns.as_str()).channel(name.as_str());
        let (done, confirmed) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                channel,
                ns: ns.clone(),
                name: name.clone(),
                done,
            })
            .map_err(|_| closed())?;
        confirmed.await.map_err(|_| closed())??;
        Ok(wakeups)
    }

    /// Whether `name`'s channels are subscribed on the server already (a waiter of it left
    /// lately, or still waits), so [`subscribe`](Subscriptions::subscribe) needs no round
    /// trip to the server.
    pub(super) fn subscribed(&self, ns: &Namespace, name: &LockName) -> bool {
        let channel = Keys::new(&self.prefix, ns.as_str()).channel(name.as_str());
        lock(&self.channels).contains_key(&channel)
    }

    /// Wakes this process's waiters of `name` (after a change this process made).
    pub(super) fn notify(&self, ns: &Namespace, name: &LockName) {
        self.hub.notify(ns, name);
    }

    /// Hands a grant this process's release pushed to the local waiter that expects `id`,
    /// if there is one.
    pub(super) fn grant(&self, ns: &Namespace, name: &LockName, id: &str, grant: PushedGrant) {
        self.hub.grant(ns, name, id, grant);
    }

    /// Wakes this process's waiters in `ns`.
    pub(super) fn notify_namespace(&self, ns: &Namespace) {
        self.hub.notify_namespace(ns);
    }
}

fn closed() -> Error {
    Error::store(
        "redis",
        true,
        "the Redis store's subscription task has stopped (the store was closed)",
    )
}

struct Actor {
    inbox: String,
    /// The channels subscribed on the server (shared with [`Subscriptions`]).
    channels: Channels,
    source: Source,
    renewals: Option<tokio::sync::watch::Receiver<u64>>,
    hub: std::sync::Weak<WakeHub>,
    timeout: Duration,
    connections: Arc<AtomicU64>,
}

enum Conn {
    Single(redis::aio::PubSubSink),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Single(sink) => sink.subscribe(channels).await,
            Conn::Cluster(conn) => {
                // One channel per call: a cluster routes each command to one slot.
                for channel in channels {
                    conn.ssubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(sink) => sink.unsubscribe(channel).await,
            Conn::Cluster(conn) => conn.sunsubscribe(channel).await,
        }
    }
}

impl Actor {
    async fn connect(
        &self,
        channels: &Channels,
    ) -> RedisResult<(Conn, mpsc::UnboundedReceiver<Event>)> {
        let (events, rx) = mpsc::unbounded_channel();
        let (channels, hub) = (channels.clone(), self.hub.clone());
        match &self.source {
            Source::Single(client) => {
                let pubsub = tokio::time::timeout(self.timeout, client.get_async_pubsub())
                    .await
                    .map_err(|_| io_timeout())??;
                let (sink, mut stream) = pubsub.split();
                tokio::spawn(async move {
                    while let Some(msg) = stream.next().await {
                        let payload: String = msg.get_payload().unwrap_or_default();
                        deliver(&channels, &hub, msg.get_channel_name(), &payload);
                    }
                    let _ = events.send(Event::Disconnected);
                });
                Ok((Conn::Single(sink), rx))
            }
            Source::Cluster(build) => {
                let sink: PushSink = Arc::new(move |push: PushInfo| {
                    let event = match push.kind {
                        PushKind::SMessage | PushKind::Message => {
                            let Some(channel) = push.data.first() else {
                                return Ok(());
                            };
                            let payload = push
                                .data
                                .get(1)
                                .and_then(|p| redis::from_redis_value_ref::<String>(p).ok())
                                .unwrap_or_default();
                            if let Ok(channel) = redis::from_redis_value_ref::<String>(channel) {
                                deliver(&channels, &hub, &channel, &payload);
                            }
                            return Ok(());
                        }
                        PushKind::Disconnection => Event::Disconnected,
                        _ => return Ok(()),
                    };
                    events.send(event).map_err(|_| ())
                });
                let client = build(sink)?;
                // The seeds may include a node that stopped answering: connecting may wait
                // out its timeouts before another node answers.
                let conn = tokio::time::timeout(self.timeout * 4, client.get_async_connection())
                    .await
                    .map_err(|_| io_timeout())??;
                Ok((Conn::Cluster(conn), rx))
            }
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let channels = self.channels.clone();
        let mut backoff = Duration::from_millis(10);
        let mut reconnect = false;
        loop {
            let (mut conn, mut events) = match self.connect(&channels).await {
                Ok(c) => c,
                Err(err) => {
                    tracing::debug!(%err, "redis subscription connection failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    if self.hub.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
            };
            self.connections.fetch_add(1, Ordering::Relaxed);
            let Some(hub) = self.hub.upgrade() else {
                return;
            };
            // Subscribe again what still has waiters.
            let again: Vec<String> = {
                let mut subscribed = lock(&channels);
                subscribed.retain(|_, (ns, name)| hub.has_subscribers(ns, name));
                subscribed.keys().cloned().collect()
            };
            if !again.is_empty() {
                let again = tokio::time::timeout(self.timeout, conn.subscribe(&again)).await;
                if !matches!(again, Ok(Ok(()))) {
                    // E.g. a cluster whose failed master has no successor yet.
                    drop(hub);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
            backoff = Duration::from_millis(10);
            if reconnect {
                // Wake-ups sent while the connection was down are lost: everyone re-tries.
                hub.notify_all();
            }
            drop(hub);
            reconnect = true;
            if let Some(r) = self.renewals.as_mut() {
                r.mark_unchanged();
            }
            loop {
                tokio::select! {
                    () = renewed(self.renewals.as_mut()) => {
                        // The cluster's topology may have changed: subscribe afresh.
                        if let Some(hub) = self.hub.upgrade() {
                            hub.notify_all();
                        }
                        break;
                    }
                    event = events.recv() => match event {
                        Some(Event::Disconnected) | None => {
                            if let Some(hub) = self.hub.upgrade() {
                                hub.notify_all();
                            }
                            // A cluster connection too is built anew: redis-rs reconnects a
                            // dropped node and subscribes it again, but it learns a new
                            // topology only when a command fails, and this connection sends
                            // none after a failover — its subscriptions would stay with the
                            // dead master. A new connection reads the topology afresh.
                            break;
                        }
                    },
                    command = commands.recv() => match command {
                        None => return,
                        Some(Command::Subscribe { channel, ns, name, done }) => {
                            if lock(&channels).contains_key(&channel) {
                                let _ = done.send(Ok(()));
                                continue;
                            }
                            let inbox = format!("{channel}:{}", self.inbox);
                            let list = [channel, inbox];
                            // Known before the server confirms, so no message that follows
                            // the confirmation is missed.
                            {
                                let mut subscribed = lock(&channels);
                                for channel in &list {
                                    subscribed.insert(channel.clone(), (ns.clone(), name.clone()));
                                }
                            }
                            let answer = tokio::time::timeout(self.timeout, conn.subscribe(&list)).await;
                            let failed = match answer {
                                Ok(Ok(())) => {
                                    let _ = done.send(Ok(()));
                                    continue;
                                }
                                Ok(Err(err)) => super::store_error(err),
                                Err(_) => super::store_error(io_timeout()),
                            };
                            let _ = done.send(Err(failed));
                            // The connection is built anew, subscribing what has waiters.
                            break;
                        }
                        Some(Command::Unsubscribe { channel, ns, name }) => {
                            let wanted = self.hub.upgrade().is_some_and(|h| h.has_subscribers(&ns, &name));
                            let inbox = format!("{channel}:{}", self.inbox);
                            let gone = !wanted && {
                                let mut subscribed = lock(&channels);
                                subscribed.remove(&inbox);
                                subscribed.remove(&channel).is_some()
                            };
                            if gone {
                                let mut gone = tokio::time::timeout(self.timeout, conn.unsubscribe(&channel)).await;
                                if matches!(gone, Ok(Ok(()))) {
                                    gone = tokio::time::timeout(self.timeout, conn.unsubscribe(&inbox)).await;
                                }
                                if !matches!(gone, Ok(Ok(()))) {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Resolves when the command connection was built anew; never without `renewals` (or once
/// the store is gone).
async fn renewed(renewals: Option<&mut tokio::sync::watch::Receiver<u64>>) {
    if let Some(r) = renewals
        && r.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

fn io_timeout() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the Redis server did not answer the subscription in time",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_messages_parse_and_wake_ups_do_not() {
        let (id, grant) = PushedGrant::parse("00ff00ff00ff00ff 1764000000000001 1234").unwrap();
        assert_eq!(id, "00ff00ff00ff00ff");
        assert_eq!(grant.fence, 1_764_000_000_000_001);
        assert_eq!(grant.after_last_try, Duration::from_micros(1234));
        for wake in ["", "x", "a b", "a b c d", "a x 1", "a 1 -1", " 1 2"] {
            assert!(PushedGrant::parse(wake).is_none(), "{wake:?}");
        }
    }
}
