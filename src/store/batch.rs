//! Batching of script calls: while one call is on the wire, the calls that
//! arrive queue up and go out together as ONE script invocation when it
//! returns. No added latency when idle; under load, one round trip and one
//! script run decide a whole batch.
//!
//! The script must take `ARGV[1]` = number of items, then each item's
//! arguments in order, with each item's keys concatenated in `KEYS`, and
//! return one flat integer array, each item's `out_len` values in order.

use std::sync::{Arc, Mutex};

use redis::Script;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::lane::Lane;
use super::memory::lock;
use crate::error::StoreError;

/// One queued call.
pub(crate) struct Item {
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<i64>,
    pub(crate) out_len: usize,
    reply: Option<oneshot::Sender<Result<Vec<i64>, StoreError>>>,
}

impl Item {
    pub(crate) fn new(keys: Vec<String>, args: Vec<i64>, out_len: usize) -> Self {
        Self {
            keys,
            args,
            out_len,
            reply: None,
        }
    }
}

/// Most items in one invocation: bounds the script's run time (Redis is
/// single-threaded) and the size of one reply.
const MAX_BATCH: usize = 256;

#[derive(Debug)]
pub(crate) struct Batcher {
    script: &'static Script,
    tx: Mutex<Option<mpsc::UnboundedSender<Item>>>,
}

impl Batcher {
    pub(crate) fn new(script: &'static Script) -> Self {
        Self {
            script,
            tx: Mutex::new(None),
        }
    }

    /// Whether this batcher runs `script`.
    pub(crate) fn runs(&self, script: &'static Script) -> bool {
        std::ptr::eq(self.script, script)
    }

    /// Queues `item` and waits for its share of the batch's reply. The
    /// caller's deadline bounds the wait.
    pub(crate) async fn submit(&self, lane: &Lane, mut item: Item) -> Result<Vec<i64>, StoreError> {
        let (reply, rx) = oneshot::channel();
        item.reply = Some(reply);
        self.send(lane, item);
        match tokio::time::timeout(lane.deadline(), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::protocol("the batch task ended")),
            Err(_) => Err(StoreError::timeout(lane.deadline())),
        }
    }

    fn send(&self, lane: &Lane, item: Item) {
        let mut tx = lock(&self.tx);
        let item = match tx.as_ref() {
            Some(t) => match t.send(item) {
                Ok(()) => return,
                Err(mpsc::error::SendError(item)) => item,
            },
            None => item,
        };
        // First use, or the runtime that ran the task is gone: start one here.
        let (new_tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(self.script, lane.clone(), rx));
        let _ = new_tx.send(item);
        *tx = Some(new_tx);
    }
}

/// Batches on the wire at once: while Redis runs one, the next is already
/// on its way, so Redis does not sit idle for a round trip between batches.
const IN_FLIGHT: usize = 2;

async fn run(script: &'static Script, lane: Lane, mut rx: mpsc::UnboundedReceiver<Item>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let permit = Arc::new(permit);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        // Callers that gave up (deadline) need no answer.
        batch.retain(|i: &Item| i.reply.as_ref().is_some_and(|r| !r.is_closed()));
        if batch.is_empty() {
            continue;
        }
        for group in by_slot(&lane, batch) {
            let lane = lane.clone();
            let permit = permit.clone();
            tokio::spawn(async move {
                let result = invoke(script, &lane, &group).await;
                dispatch(group, result);
                drop(permit);
            });
        }
    }
}

/// On a cluster, one script call may only touch keys of one hash slot: the
/// batch goes out as one call per slot (all at once). Standalone: one call.
#[cfg(feature = "cluster")]
fn by_slot(lane: &Lane, batch: Vec<Item>) -> Vec<Vec<Item>> {
    use redis::cluster_routing::Slot;
    if !lane.is_cluster() {
        return vec![batch];
    }
    let mut groups: Vec<(Slot, Vec<Item>)> = Vec::new();
    for item in batch {
        let slot = Slot::for_key(item.keys.first().map_or("", String::as_str));
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, g)) => g.push(item),
            None => groups.push((slot, vec![item])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

#[cfg(not(feature = "cluster"))]
fn by_slot(_lane: &Lane, batch: Vec<Item>) -> Vec<Vec<Item>> {
    vec![batch]
}

/// Hands each caller its share of the batch's reply.
fn dispatch(batch: Vec<Item>, result: Result<Vec<i64>, StoreError>) {
    match result {
        Ok(values) => {
            let mut rest = values.as_slice();
            for item in batch {
                let reply = if rest.len() >= item.out_len {
                    let (mine, tail) = rest.split_at(item.out_len);
                    rest = tail;
                    Ok(mine.to_vec())
                } else {
                    Err(StoreError::protocol("batch reply shorter than expected"))
                };
                if let Some(tx) = item.reply {
                    let _ = tx.send(reply);
                }
            }
        }
        Err(e) => {
            for item in batch {
                if let Some(tx) = item.reply {
                    let _ = tx.send(Err(e.duplicate()));
                }
            }
        }
    }
}

async fn invoke(
    script: &'static Script,
    lane: &Lane,
    batch: &[Item],
) -> Result<Vec<i64>, StoreError> {
    let mut inv = script.prepare_invoke();
    inv.arg(batch.len());
    for item in batch {
        for k in &item.keys {
            inv.key(k);
        }
        for a in &item.args {
            inv.arg(*a);
        }
    }
    // Every item of a batch shares one slot (see `by_slot`): its first key
    // routes the breaker.
    let key = batch
        .first()
        .and_then(|i| i.keys.first())
        .map_or("", String::as_str);
    let mut conn = lane.conn();
    lane.call(key, inv.invoke_async::<Vec<i64>>(&mut conn))
        .await
}
