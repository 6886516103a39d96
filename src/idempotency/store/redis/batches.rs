//! Reservations and completions, batched like rate-limit decisions: those
//! in flight go out as ONE call of `scripts/reserve.lua` (or
//! `complete.lua`) per batch and hash slot, so a replay or a first
//! execution costs Redis a share of one script run instead of one each.
//!
//! A reservation of a record this instance has seen completed (it stored
//! the response, or answered a replay of it) is first a plain read, sent
//! beside the batch's script call: a completed record answers the replay
//! (or the fingerprint mismatch) without a script, which costs Redis a
//! fraction of one. A read that finds anything else (the record expired,
//! was evicted or is in progress) hands the reservation to the script, so
//! the outcome is the script's in every case; a first execution costs no
//! more than before.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::{Cmd, Script, Value};

use super::done::Done;
use crate::error::StoreError;
use crate::idempotency::fingerprint::{RecordKey, Token};
use crate::idempotency::store::{Reservation, Reserve};
use crate::store::batch::{call_script, evalsha, Protocol};
use crate::store::lane::Lane;

pub(super) static RESERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../scripts/reserve.lua")));
pub(super) static COMPLETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../scripts/complete.lua")));

/// An item of a batched call on one record: its key, then its arguments.
trait OnRecord: Send + Sync + 'static {
    fn record(&self) -> &RecordKey;
    fn args(&self, cmd: &mut Cmd);
}

impl OnRecord for Reserve {
    fn record(&self) -> &RecordKey {
        &self.hold.key
    }

    fn args(&self, cmd: &mut Cmd) {
        cmd.arg(&self.hold.token.0[..])
            .arg(&self.hold.fingerprint.0[..])
            .arg(super::millis(self.lease));
    }
}

impl OnRecord for Completion {
    fn record(&self) -> &RecordKey {
        &self.key
    }

    fn args(&self, cmd: &mut Cmd) {
        cmd.arg(&self.token.0[..])
            .arg(&self.record[..])
            .arg(super::millis(self.ttl));
    }
}

fn slot_of(item: &impl OnRecord) -> u16 {
    crate::store::slots::slot::of_parts(&[item.record().0.as_bytes()])
}

/// One call of `script` for the whole batch: every record's key, then
/// every item's arguments; the reply split into one answer per item by
/// `split`, or the error for each.
async fn call<T: OnRecord, R>(
    lane: &Lane,
    slot: u16,
    script: &Script,
    prefix: &str,
    items: &[&T],
    split: impl FnOnce(usize, Value) -> Result<Vec<R>, StoreError>,
) -> Vec<Result<R, StoreError>> {
    let mut cmd = evalsha(script);
    cmd.arg(items.len());
    for item in items {
        cmd.arg(super::key(prefix, item.record()));
    }
    for item in items {
        item.args(&mut cmd);
    }
    match call_script(lane, slot, script, &cmd)
        .await
        .and_then(|reply| split(items.len(), reply))
    {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) => items.iter().map(|_| Err(e.duplicate())).collect(),
    }
}

/// The reservations' protocol, for the store with key prefix `prefix`.
pub(crate) struct Reserves {
    pub(super) prefix: String,
    pub(super) done: Arc<Done>,
}

impl Reserves {
    /// The reserve script for `items` (no call for none).
    async fn reserve(
        &self,
        lane: &Lane,
        slot: u16,
        items: &[&Reserve],
    ) -> Vec<Result<Reservation, StoreError>> {
        match items.is_empty() {
            true => Vec::new(),
            false => call(lane, slot, &RESERVE, &self.prefix, items, parse).await,
        }
    }

    /// Step 1 for the reservations of records known completed: one read
    /// each; `None` where the script must decide.
    async fn read(
        &self,
        lane: &Lane,
        slot: u16,
        items: &[&Reserve],
    ) -> Result<Vec<Option<Reservation>>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // One read per record: the retries of one record in a batch share it.
        let mut first: Vec<usize> = Vec::with_capacity(items.len());
        let mut reads: Vec<&Reserve> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(items.len());
        for r in items {
            let u = *seen.entry(&r.record().0).or_insert_with(|| {
                reads.push(r);
                reads.len() - 1
            });
            first.push(u);
        }
        let mut pipe = redis::pipe();
        for r in &reads {
            // `r` is set with `s = c` only, in one step (`complete.lua`).
            pipe.cmd("HMGET")
                .arg(super::key(&self.prefix, r.record()))
                .arg("f")
                .arg("r");
        }
        let mut conn = lane.conn();
        let values = lane
            .call_in_slot(slot, pipe.query_async::<Vec<Value>>(&mut conn))
            .await?;
        if values.len() != reads.len() {
            return Err(bad(&"a read per record"));
        }
        // Per record: its fingerprint and response, when completed.
        let completed: Vec<Option<(Vec<u8>, Bytes)>> = values
            .into_iter()
            .map(|v| {
                let Value::Array(v) = v else { return None };
                match <[Value; 2]>::try_from(v).ok()? {
                    [Value::BulkString(f), Value::BulkString(record)] => {
                        Some((f, Bytes::from(record)))
                    }
                    _ => None,
                }
            })
            .collect();
        Ok(items
            .iter()
            .zip(first)
            .map(|(r, u)| {
                let (f, record) = completed[u].as_ref()?;
                Some(if f[..] == r.hold.fingerprint.0[..] {
                    Reservation::Completed(record.clone())
                } else {
                    Reservation::Mismatch
                })
            })
            .collect())
    }
}

impl Protocol for Reserves {
    type Item = Reserve;
    type Reply = Reservation;

    fn slot(&self, r: &Reserve) -> u16 {
        slot_of(r)
    }

    fn run<'a>(
        &'a self,
        lane: &'a Lane,
        slot: u16,
        items: &'a [Reserve],
    ) -> BoxFuture<'a, Vec<Result<Reservation, StoreError>>> {
        Box::pin(async move {
            let pick = |ix: &[usize]| ix.iter().map(|&i| &items[i]).collect::<Vec<_>>();
            let (known, other): (Vec<usize>, Vec<usize>) =
                (0..items.len()).partition(|&i| self.done.knows(items[i].record()));
            // The reads and the script of the others, side by side.
            let (read, scripted) = futures_util::future::join(
                self.read(lane, slot, &pick(&known)),
                self.reserve(lane, slot, &pick(&other)),
            )
            .await;
            let mut out: Vec<Option<Result<Reservation, StoreError>>> =
                items.iter().map(|_| None).collect();
            // What the reads could not answer goes to the script, in order.
            let mut again = Vec::new();
            match read {
                Ok(read) => {
                    for (&i, a) in known.iter().zip(read) {
                        match a {
                            Some(a) => out[i] = Some(Ok(a)),
                            None => {
                                self.done.forget(items[i].record());
                                again.push(i);
                            }
                        }
                    }
                }
                Err(e) => known
                    .iter()
                    .for_each(|&i| out[i] = Some(Err(e.duplicate()))),
            }
            let retried = self.reserve(lane, slot, &pick(&again)).await;
            let scripts = other
                .iter()
                .chain(&again)
                .zip(scripted.into_iter().chain(retried));
            for (&i, a) in scripts {
                // The records the script found completed (those read are known).
                if matches!(a, Ok(Reservation::Completed(_))) {
                    self.done.learn(items[i].record());
                }
                out[i] = Some(a);
            }
            out.into_iter()
                .map(|a| a.unwrap_or_else(|| Err(StoreError::protocol("no reservation answer"))))
                .collect()
        })
    }
}

/// One completion: the record, the holder's token, the encoded response
/// and how long the record is kept.
pub(crate) struct Completion {
    pub(super) key: RecordKey,
    pub(super) token: Token,
    pub(super) record: Bytes,
    pub(super) ttl: Duration,
}

/// The completions' protocol, for the store with key prefix `prefix`.
pub(crate) struct Completes {
    pub(super) prefix: String,
    pub(super) done: Arc<Done>,
}

impl Protocol for Completes {
    type Item = Completion;
    /// Stored (`false`: the lease was lost).
    type Reply = bool;

    fn slot(&self, c: &Completion) -> u16 {
        slot_of(c)
    }

    fn run<'a>(
        &'a self,
        lane: &'a Lane,
        slot: u16,
        items: &'a [Completion],
    ) -> BoxFuture<'a, Vec<Result<bool, StoreError>>> {
        Box::pin(async move {
            let all: Vec<&Completion> = items.iter().collect();
            let answers = call(lane, slot, &COMPLETE, &self.prefix, &all, stored).await;
            for (c, a) in items.iter().zip(&answers) {
                if matches!(a, Ok(true)) {
                    self.done.learn(&c.key);
                }
            }
            answers
        })
    }
}

/// One flag per record: 1 stored, 0 the lease was lost.
fn stored(n: usize, reply: Value) -> Result<Vec<bool>, StoreError> {
    match reply {
        Value::Array(v) if v.len() == n => v
            .into_iter()
            .map(|f| match f {
                Value::Int(flag) => Ok(flag == 1),
                other => Err(bad_complete(&other)),
            })
            .collect(),
        other => Err(bad_complete(&other)),
    }
}

fn bad_complete(what: &dyn std::fmt::Debug) -> StoreError {
    StoreError::protocol(format!("idempotency complete script returned {what:?}"))
}

fn bad(what: &dyn std::fmt::Debug) -> StoreError {
    StoreError::protocol(format!("idempotency reserve script returned {what:?}"))
}

/// Two values per record: its code and what goes with it.
fn parse(n: usize, reply: Value) -> Result<Vec<Reservation>, StoreError> {
    let Value::Array(values) = reply else {
        return Err(bad(&reply));
    };
    if values.len() != 2 * n {
        return Err(bad(&format_args!(
            "{} values for {n} records",
            values.len()
        )));
    }
    let mut it = values.into_iter();
    let mut out = Vec::with_capacity(n);
    while let (Some(code), Some(extra)) = (it.next(), it.next()) {
        out.push(match (code, extra) {
            (Value::Int(0), _) => Reservation::Reserved,
            (Value::Int(1), Value::Int(pttl)) => Reservation::InProgress {
                lease_left: Duration::from_millis(pttl.max(0) as u64),
            },
            (Value::Int(2), _) => Reservation::Mismatch,
            (Value::Int(3), Value::BulkString(record)) => {
                Reservation::Completed(Bytes::from(record))
            }
            other => return Err(bad(&other)),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reply_is_split_per_record() {
        let reply = Value::Array(vec![
            Value::Int(0),
            Value::Nil,
            Value::Int(1),
            Value::Int(1500),
            Value::Int(2),
            Value::Nil,
            Value::Int(3),
            Value::BulkString(b"rec".to_vec()),
        ]);
        assert_eq!(
            parse(4, reply).unwrap(),
            vec![
                Reservation::Reserved,
                Reservation::InProgress {
                    lease_left: Duration::from_millis(1500)
                },
                Reservation::Mismatch,
                Reservation::Completed(Bytes::from_static(b"rec")),
            ]
        );
    }

    #[test]
    fn an_unknown_state_or_a_short_reply_is_a_protocol_error() {
        let unknown = Value::Array(vec![Value::Int(4), Value::Nil]);
        assert!(parse(1, unknown).is_err());
        assert!(parse(2, Value::Array(vec![Value::Int(0), Value::Nil])).is_err());
    }
}
