//! Batching of script calls: while one call is on the wire, the calls that
//! arrive queue up and go out together as ONE script invocation when it
//! returns. No added latency when idle; under load, one round trip and one
//! script run decide a whole batch, and a busy batcher lingers a few turns
//! of the runtime before it sends (see [`LINGER_TURNS`]).
//!
//! What a batch looks like on the wire is the [`Protocol`] of the layer that
//! batches: usually it writes the keys and arguments of a whole batch
//! straight into one `EVALSHA` command (no per-item argument vectors) and
//! splits the reply.

use std::any::Any;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::{Cmd, Script, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::lane::Lane;
use super::memory::lock;
use crate::error::StoreError;

/// How one kind of item is batched: usually into one script call (see
/// [`evalsha`] and [`call_script`]).
pub(crate) trait Protocol: Send + Sync + 'static {
    /// One caller's question.
    type Item: Send + Sync + 'static;
    /// One caller's answer.
    type Reply: Send + 'static;

    /// The hash slot of the item's keys (asked on a cluster only): a call
    /// only carries items of one slot.
    fn slot(&self, item: &Self::Item) -> u16;

    /// Answers `items` (all of hash slot `slot`) in as few round trips as
    /// it can: one answer per item, in order.
    fn run<'a>(
        &'a self,
        lane: &'a Lane,
        slot: u16,
        items: &'a [Self::Item],
    ) -> BoxFuture<'a, Vec<Result<Self::Reply, StoreError>>>;
}

type Answer<P> = Result<<P as Protocol>::Reply, StoreError>;

/// One queued call, where its answer goes and when its caller gives up.
struct Queued<P: Protocol> {
    item: P::Item,
    reply: oneshot::Sender<Answer<P>>,
    until: Instant,
}

/// Most items in one invocation: bounds the script's run time (Redis is
/// single-threaded) and the size of one reply.
const MAX_BATCH: usize = 256;

/// The batcher of one protocol on one store.
pub(crate) struct Batcher<P: Protocol> {
    protocol: Arc<P>,
    tx: Mutex<Option<mpsc::UnboundedSender<Queued<P>>>>,
}

impl<P: Protocol> std::fmt::Debug for Batcher<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("protocol", &std::any::type_name::<P>())
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Batcher<P> {
    pub(crate) fn new(protocol: P) -> Self {
        Self {
            protocol: Arc::new(protocol),
            tx: Mutex::new(None),
        }
    }

    /// Queues `item` and waits for its share of the batch's reply. The
    /// lane's deadline from now bounds the wait: the batcher answers a
    /// caller whose deadline passed in the queue at once, and one whose
    /// deadline passes while its batch is out when it passes; the batch's
    /// call gives up at its last caller's deadline. One timer per batch,
    /// none per caller (a timer is a lock and a wheel entry each way).
    pub(crate) async fn submit(&self, lane: &Lane, item: P::Item) -> Answer<P> {
        let (reply, rx) = oneshot::channel();
        let until = Instant::now() + lane.deadline();
        self.send(lane, Queued { item, reply, until });
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(StoreError::protocol("the batch task ended")),
        }
    }

    fn send(&self, lane: &Lane, queued: Queued<P>) {
        let mut tx = lock(&self.tx);
        let queued = match tx.as_ref() {
            Some(t) => match t.send(queued) {
                Ok(()) => return,
                Err(mpsc::error::SendError(q)) => q,
            },
            None => queued,
        };
        // First use, or the runtime that ran the task is gone: start one here.
        let (new_tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(self.protocol.clone(), lane.clone(), rx));
        let _ = new_tx.send(queued);
        *tx = Some(new_tx);
    }
}

/// The batchers of one store, one per protocol, created on first use.
#[derive(Debug, Default)]
pub(crate) struct Batchers(Mutex<Vec<Arc<dyn Any + Send + Sync>>>);

impl Batchers {
    /// The batcher of protocol `P` (shared by every layer of the store),
    /// made with `make` on first use.
    pub(crate) fn get<P: Protocol>(&self, make: impl FnOnce() -> P) -> Arc<Batcher<P>> {
        let mut all = lock(&self.0);
        if let Some(b) = all
            .iter()
            .find_map(|b| b.clone().downcast::<Batcher<P>>().ok())
        {
            return b;
        }
        let b = Arc::new(Batcher::new(make()));
        all.push(b.clone());
        b
    }
}

/// Batches on the wire at once. One: the decisions that arrive while a
/// batch is out all go in the next, so batches are as large as the load
/// makes them. Measured at 32 connections against two in flight: half the
/// round trips per request, less server and Redis CPU per request, the
/// same median latency.
const IN_FLIGHT: usize = 1;

/// Turns of the runtime a busy batcher lets pass before it sends a batch:
/// one turn runs every task that is ready and polls the I/O driver once
/// (no timer, no sleep). Without them, batches leapfrog: while one is on
/// the wire the next fills with half of the callers, and the callers its
/// answers let go (and the requests whose bytes arrive meanwhile) miss it
/// by a few microseconds and wait a whole round trip. With them a batch
/// takes nearly every caller. Measured at 32 connections on the load
/// bench (rate limit on Redis over 1000 clients): 0.08 → 0.04 round trips
/// per request, server CPU 17.4 → 14.3 µs and Redis CPU 7.3 → 5.7 µs per
/// request; more turns (8) gained no more round trips and cost CPU, and
/// stopping at the first turn that adds nothing gave back half the gain.
/// Only a batcher whose last batch carried more than one call lingers: a
/// lone request goes out at once.
const LINGER_TURNS: usize = 4;

async fn run<P: Protocol>(
    protocol: Arc<P>,
    lane: Lane,
    mut rx: mpsc::UnboundedReceiver<Queued<P>>,
) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut busy = false;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let permit = Arc::new(permit);
        let Some(first) = rx.recv().await else {
            return;
        };
        if busy {
            for _ in 0..LINGER_TURNS {
                if rx.len() + 1 >= MAX_BATCH {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        // Sized to what is queued: a buffer of MAX_BATCH items per batch
        // would be a large allocation (and a malloc consolidation) each time.
        let mut batch = Vec::with_capacity((rx.len() + 1).min(MAX_BATCH));
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        busy = batch.len() > 1;
        // Callers that went away need no answer; those whose deadline passed
        // while they queued get their timeout now.
        let now = Instant::now();
        for late in batch.extract_if(.., |q| q.until <= now || q.reply.is_closed()) {
            // Fails only for a caller that went away: nothing to tell.
            let _ = late.reply.send(Err(StoreError::timeout(lane.deadline())));
        }
        if batch.is_empty() {
            continue;
        }
        for group in by_slot(&*protocol, &lane, batch) {
            let (lane, protocol, permit) = (lane.clone(), protocol.clone(), permit.clone());
            tokio::spawn(async move {
                let (items, mut callers): (Vec<_>, Vec<_>) = group
                    .into_iter()
                    .map(|q| (q.item, (Some(q.reply), q.until)))
                    .unzip();
                // The call gives up when no caller waits any longer.
                let lane = match callers.iter().map(|c| c.1).max() {
                    Some(last) => lane.until(last),
                    None => lane,
                };
                let call = invoke(&*protocol, &lane, &items);
                let answers = answer_late(call, &mut callers, lane.deadline()).await;
                drop(permit);
                for ((tx, _), answer) in callers.into_iter().zip(answers) {
                    if let Some(tx) = tx {
                        let _ = tx.send(answer);
                    }
                }
            });
        }
    }
}

/// A batch's caller: where its answer goes (until it is given) and when it
/// gives up.
type Caller<R> = (Option<oneshot::Sender<Result<R, StoreError>>>, Instant);

/// Awaits a batch's `call`, answering each caller whose deadline passes
/// meanwhile with a timeout (the others still get the call's answer): one
/// timer for the batch, set again only when a deadline passes.
async fn answer_late<T, R>(
    call: impl Future<Output = T>,
    callers: &mut [Caller<R>],
    deadline: Duration,
) -> T {
    let mut call = pin!(call);
    let next = |callers: &[Caller<R>]| callers.iter().filter(|c| c.0.is_some()).map(|c| c.1).min();
    let Some(first) = next(callers) else {
        return call.await;
    };
    let mut timer = pin!(tokio::time::sleep_until(first));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = call.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        while let Some(until) = next(callers) {
            if timer.deadline() != until {
                timer.as_mut().reset(until);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            for (reply, until) in callers.iter_mut() {
                if *until <= now {
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(Err(StoreError::timeout(deadline)));
                    }
                }
            }
        }
        // Every caller has its answer; the call goes on to its own end,
        // for the breaker.
        Poll::Pending
    })
    .await
}

/// On a cluster, one script call may only touch keys of one hash slot: the
/// batch goes out as one call per slot (all at once). Standalone: one call.
fn by_slot<P: Protocol>(protocol: &P, lane: &Lane, batch: Vec<Queued<P>>) -> Vec<Vec<Queued<P>>> {
    if !lane.is_cluster() {
        return vec![batch];
    }
    let mut groups: Vec<(u16, Vec<Queued<P>>)> = Vec::new();
    for q in batch {
        let slot = protocol.slot(&q.item);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, g)) => g.push(q),
            None => groups.push((slot, vec![q])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// One batch of `items` (of one slot): each item's answer, in order.
async fn invoke<P: Protocol>(protocol: &P, lane: &Lane, items: &[P::Item]) -> Vec<Answer<P>> {
    let slot = if lane.is_cluster() {
        items.first().map_or(0, |i| protocol.slot(i))
    } else {
        0
    };
    protocol.run(lane, slot, items).await
}

/// `EVALSHA <sha of script>`, to which a protocol writes a batch's keys
/// and arguments.
pub(crate) fn evalsha(script: &Script) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash());
    cmd
}

/// Runs `cmd` (an [`evalsha`] of `script`) on the lane, under the breaker
/// of `slot`, loading the script first if Redis lost it.
pub(crate) async fn call_script(
    lane: &Lane,
    slot: u16,
    script: &Script,
    cmd: &Cmd,
) -> Result<Value, StoreError> {
    let mut conn = lane.conn();
    let call = async {
        match cmd.query_async::<Value>(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script.prepare_invoke().load_async(&mut conn).await?;
                cmd.query_async::<Value>(&mut conn).await
            }
            other => other,
        }
    };
    lane.call_in_slot(slot, call).await
}

/// Reads a script's reply of numbers packed as little-endian doubles (Lua's
/// `struct.pack('<d...')`): one bulk string, far cheaper for Redis to send
/// and for redis-rs to parse than an array of integers.
pub(crate) struct Packed<'a>(std::slice::ChunksExact<'a, u8>);

impl<'a> Packed<'a> {
    pub(crate) fn new(reply: &'a Value) -> Result<Self, StoreError> {
        match reply {
            Value::BulkString(bytes) if bytes.len() % 8 == 0 => Ok(Self(bytes.chunks_exact(8))),
            _ => Err(StoreError::protocol(
                "a script's reply is not packed numbers",
            )),
        }
    }

    /// The next number (an integer below 2^53 in magnitude).
    pub(crate) fn int(&mut self) -> Result<i64, StoreError> {
        let chunk = self
            .0
            .next()
            .ok_or_else(|| StoreError::protocol("a script's reply is shorter than expected"))?;
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        Ok(f64::from_le_bytes(b) as i64)
    }

    /// Whether every number was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}
