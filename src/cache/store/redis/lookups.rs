//! Cache lookups, batched like rate-limit decisions: the lookups in flight
//! go out together, per hash slot, in two steps.
//!
//! 1. One pipeline of plain reads: `TIME`, then one `MGET` of the entry
//!    keys of the URLs without Vary (their one entry is a key of its own,
//!    living as long as the entry may be kept), then per other lookup one
//!    `HMGET` of the URL's index (its Vary spec and generation, the
//!    variant's entry, fresh-until and expiry). A lookup whose entry is
//!    fresh (or that takes no lock, or whose URL's Vary changed) is
//!    answered from it: a hit costs Redis one key read and no script. An
//!    entry past its expiry reads as absent (hash fields have no TTL of
//!    their own).
//! 2. The others (a miss, a stale entry, a forced revalidation: those that
//!    may take the fill lock) in one call of `scripts/lookup.lua`, which
//!    reads again and takes the locks atomically.

use std::io::Write as _;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::{Cmd, RedisWrite as _, Script, Value};

use crate::cache::entry;
use crate::cache::key::Slot;
use crate::cache::store::{Found, LockState, Lookup};
use crate::error::StoreError;
use crate::store::batch::{call_script, evalsha, Protocol};
use crate::store::lane::Lane;

pub(super) static LOOKUP: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../scripts/lookup.lua")));

/// The cache lookups' protocol, for the store with key prefix `prefix`.
pub(crate) struct Lookups {
    pub(super) prefix: String,
}

/// The keys of a slot after `{prefix}:cache:{<url digest>}:` (with the
/// variant after those that take it), in the script's order: index (the
/// URL's entries and generation), lock, hit-for-miss marker, the entry key
/// and soft-purged copy of a URL without Vary.
const PARTS: [(&str, bool); 5] = [
    ("i", false),
    ("l:", true),
    ("p:", true),
    ("h", false),
    ("s", false),
];
/// [`PARTS`]' entry key.
const OWN: (&str, bool) = PARTS[3];

/// The index fields a lookup reads, in order: the URL's Vary spec and
/// generation, then the variant's fresh-until, expiry and entry.
const FIELDS: [&str; 5] = ["vary", "g", "f:", "x:", "e:"];

/// How step 1 reads a lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// In the batch's `MGET`: a URL without Vary.
    Own,
    /// One `HMGET` of the URL's index.
    Index,
    /// Not at all: a forced revalidation goes to the script.
    Skip,
}

fn how(q: &Lookup) -> Read {
    match () {
        _ if q.force => Read::Skip,
        _ if q.slot.spec.is_empty() => Read::Own,
        _ => Read::Index,
    }
}

impl Lookups {
    fn key(&self, w: &mut impl std::io::Write, slot: &Slot, (part, variant): (&str, bool)) {
        let _ = w.write_all(self.prefix.as_bytes());
        let _ = w.write_all(b":cache:{");
        let _ = w.write_all(slot.url.as_bytes());
        let _ = w.write_all(b"}:");
        let _ = w.write_all(part.as_bytes());
        if variant {
            let _ = w.write_all(slot.variant.as_bytes());
        }
    }

    /// Step 1: the plain reads of the lookups (`None`: none to make).
    fn reads(&self, items: &[Lookup]) -> Option<redis::Pipeline> {
        let mut pipe = redis::pipe();
        pipe.cmd("TIME");
        let mut own = redis::cmd("MGET");
        let mut any = false;
        for q in items.iter().filter(|q| how(q) == Read::Own) {
            self.key(&mut own.writer_for_next_arg(), &q.slot, OWN);
            any = true;
        }
        if any {
            pipe.add_command(own);
        }
        for q in items.iter().filter(|q| how(q) == Read::Index) {
            let mut cmd = redis::cmd("HMGET");
            self.key(&mut cmd.writer_for_next_arg(), &q.slot, PARTS[0]);
            for field in FIELDS {
                if field.ends_with(':') {
                    let mut w = cmd.writer_for_next_arg();
                    let _ = w.write_all(field.as_bytes());
                    let _ = w.write_all(q.slot.variant.as_bytes());
                } else {
                    cmd.arg(field);
                }
            }
            pipe.add_command(cmd);
            any = true;
        }
        any.then_some(pipe)
    }
    /// Step 2: the lookups that may take a lock, in one script call.
    fn script(&self, items: &[&Lookup]) -> Cmd {
        let mut cmd = evalsha(&LOOKUP);
        cmd.arg(PARTS.len() * items.len());
        for q in items {
            for part in PARTS {
                self.key(&mut cmd.writer_for_next_arg(), &q.slot, part);
            }
        }
        for q in items {
            cmd.arg(&*q.slot.spec).arg(&*q.slot.variant);
            match q.lock {
                Some((token, ttl)) => cmd.arg(token).arg(ttl),
                None => cmd.arg("").arg(0),
            };
            cmd.arg(if q.force { "1" } else { "0" });
        }
        cmd
    }
}

impl Protocol for Lookups {
    type Item = Lookup;
    type Reply = Found;

    fn slot(&self, q: &Lookup) -> u16 {
        crate::store::slots::slot::of_parts(&[q.slot.url.as_bytes()])
    }

    fn run<'a>(
        &'a self,
        lane: &'a Lane,
        slot: u16,
        items: &'a [Lookup],
    ) -> BoxFuture<'a, Vec<Result<Found, StoreError>>> {
        let pipe = self.reads(items);
        Box::pin(async move {
            let fail = |e: &StoreError| items.iter().map(|_| Err(e.duplicate())).collect();
            let mut answers = match pipe {
                Some(pipe) => {
                    let mut conn = lane.conn();
                    let read = lane
                        .call_in_slot(slot, pipe.query_async::<Vec<Value>>(&mut conn))
                        .await
                        .and_then(|values| read(items, values));
                    match read {
                        Ok(answers) => answers,
                        Err(e) => return fail(&e),
                    }
                }
                None => (0..items.len()).map(|_| None).collect(),
            };
            let locking: Vec<usize> = (0..items.len()).filter(|&i| answers[i].is_none()).collect();
            if !locking.is_empty() {
                let asked: Vec<&Lookup> = locking.iter().map(|&i| &items[i]).collect();
                let cmd = self.script(&asked);
                match call_script(lane, slot, &LOOKUP, &cmd)
                    .await
                    .and_then(|reply| found(&asked, reply))
                {
                    Ok(found) => {
                        for (i, f) in locking.into_iter().zip(found) {
                            answers[i] = Some(f);
                        }
                    }
                    Err(e) => {
                        return answers
                            .into_iter()
                            .map(|a| a.ok_or_else(|| e.duplicate()))
                            .collect()
                    }
                }
            }
            answers
                .into_iter()
                .map(|a| a.ok_or_else(|| StoreError::protocol("cache lookup: no answer")))
                .collect()
        })
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::protocol(format!("cache lookup: {what}"))
}

/// Step 1's answers: `None` for a lookup that step 2 must make.
fn read(items: &[Lookup], values: Vec<Value>) -> Result<Vec<Option<Found>>, StoreError> {
    let own = items.iter().filter(|q| how(q) == Read::Own).count();
    let index = items.iter().filter(|q| how(q) == Read::Index).count();
    if values.len() != 1 + usize::from(own > 0) + index {
        return Err(bad("unexpected pipeline reply"));
    }
    let mut it = values.into_iter();
    let now_ms = match it.next() {
        Some(Value::Array(t)) => {
            let mut t = t.into_iter().map(int_of);
            match (t.next().flatten(), t.next().flatten()) {
                (Some(s), Some(us)) => s * 1000 + us / 1000,
                _ => return Err(bad("TIME")),
            }
        }
        _ => return Err(bad("TIME")),
    };
    let mut owned = match (own > 0).then(|| it.next()).flatten() {
        Some(Value::Array(v)) if v.len() == own => v.into_iter(),
        None => Vec::new().into_iter(),
        _ => return Err(bad("unexpected MGET reply")),
    };
    let found = |spec: Arc<str>, entry: Option<Vec<u8>>, gen| Found {
        now_ms,
        spec,
        entry: entry.map(Bytes::from),
        lock: LockState::NotTried,
        gen,
    };
    let mut out = Vec::with_capacity(items.len());
    for q in items {
        out.push(match how(q) {
            Read::Skip => None,
            Read::Own => {
                // The key lives as long as the entry may be kept, and a
                // purge drops it or moves it aside: what it holds is the
                // URL's entry, unpurged (generation 0 is no purge after it).
                let raw = bytes_of(owned.next().unwrap_or(Value::Nil));
                let fresh = raw
                    .as_deref()
                    .and_then(entry::fresh_until_of)
                    .is_some_and(|f| now_ms < f);
                match raw {
                    Some(raw) if fresh || q.lock.is_none() => {
                        Some(found(q.slot.spec.clone(), Some(raw), 0))
                    }
                    _ => None,
                }
            }
            Read::Index => {
                let Some(Value::Array(index)) = it.next() else {
                    return Err(bad("unexpected read"));
                };
                let mut index = index.into_iter();
                let mut next = || index.next().unwrap_or(Value::Nil);
                let (stored, gen) = (bytes_of(next()), int_of(next()).unwrap_or(0));
                let (fresh_until, expires, raw) =
                    (int_of(next()), int_of(next()), bytes_of(next()));
                // Past its expiry an entry is absent: its field outlives it.
                let raw = raw.filter(|_| expires.is_some_and(|x| now_ms < x));
                match stored {
                    Some(s) if s != q.slot.spec.as_bytes() => {
                        Some(found(String::from_utf8_lossy(&s).into(), None, gen))
                    }
                    _ if q.lock.is_none() => Some(found(q.slot.spec.clone(), raw, gen)),
                    _ if raw.is_some() && fresh_until.is_some_and(|f| now_ms < f) => {
                        Some(found(q.slot.spec.clone(), raw, gen))
                    }
                    _ => None,
                }
            }
        });
    }
    Ok(out)
}

/// Step 2's answers: `{now, then per lookup: lock, generation, stored spec
/// when it differs, entry}`.
fn found(items: &[&Lookup], reply: Value) -> Result<Vec<Found>, StoreError> {
    let Value::Array(values) = reply else {
        return Err(bad("not an array"));
    };
    if values.len() != 1 + 4 * items.len() {
        return Err(bad("unexpected reply length"));
    }
    let mut it = values.into_iter();
    let Some(Value::Int(now)) = it.next() else {
        return Err(bad("no time"));
    };
    let mut out = Vec::with_capacity(items.len());
    for q in items {
        let (Some(Value::Int(lock)), Some(gen), Some(spec), Some(entry)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad("unexpected reply"));
        };
        out.push(Found {
            now_ms: now.max(0) as u64,
            spec: match bytes_of(spec) {
                Some(s) => String::from_utf8_lossy(&s).into(),
                None => q.slot.spec.clone(),
            },
            entry: bytes_of(entry).map(Bytes::from),
            lock: match lock {
                1 => LockState::Acquired,
                2 => LockState::Held,
                3 => LockState::HitForMiss,
                _ => LockState::NotTried,
            },
            gen: int_of(gen).ok_or_else(|| bad("generation"))?,
        });
    }
    Ok(out)
}

pub(super) fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// A decimal number sent as a string (or an integer).
pub(super) fn int_of(v: Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(i).ok(),
        v => std::str::from_utf8(&bytes_of(v)?).ok()?.parse().ok(),
    }
}
