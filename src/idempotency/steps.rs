//! The decisions of the request path, as small pure functions: what a
//! request is, what each store answer and each handler outcome leads to.
//! The futures (`future.rs`, `execute.rs`) only carry them out.

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::capture::Captured;
use super::config::{Config, Conflict};
use super::record::StoredResponse;
use super::response::{IdempotencyOutcome as Outcome, Rejection};
use super::store::{Reservation, Written};
use crate::error::StoreError;

/// The request body was read: `Some` answers the request at once.
pub(super) fn after_read<E>(ended: &Captured<E>, max_body: usize) -> Option<Rejection> {
    match ended {
        Captured::Done => None,
        Captured::Over => Some(Rejection::TooLarge { max_body }),
        Captured::Failed(_) => {
            tracing::debug!("idempotency: the request body failed");
            Some(Rejection::bad_request("the request body could not be read"))
        }
    }
}

/// How long a request that met its key in progress has waited.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Wait {
    until: Option<Instant>,
    attempt: u32,
}

impl Wait {
    /// When to ask the store again, or `None` once `max` has passed: after
    /// 10, 20, 40, 80 ms, then every 160 ms.
    pub(super) fn next(&mut self, max: Duration, now: Instant) -> Option<Duration> {
        let until = *self.until.get_or_insert(now + max);
        if now >= until {
            return None;
        }
        let delay = Duration::from_millis(10 << self.attempt.min(4)).min(until - now);
        self.attempt += 1;
        Some(delay)
    }
}

/// What a reservation answer leads to.
#[derive(Debug)]
pub(super) enum OnReserve {
    /// Reserved: run the handler.
    Run,
    /// In progress and waiting: ask again after this long.
    AskAgain(Duration),
    /// Answered at once.
    Reject(Rejection),
    /// Completed: replay this response.
    Replay(StoredResponse),
    /// The store could not decide: the failure policy answers.
    StoreFailed(StoreError),
}

/// Decides what a reservation answer leads to.
pub(super) fn after_reserve(
    result: Result<Reservation, StoreError>,
    conflict: Conflict,
    wait: &mut Wait,
    now: Instant,
) -> OnReserve {
    match result {
        Ok(Reservation::Reserved) => OnReserve::Run,
        Ok(Reservation::InProgress { lease_left }) => match conflict {
            Conflict::Wait(max) => match wait.next(max, now) {
                Some(delay) => OnReserve::AskAgain(delay),
                None => OnReserve::Reject(Rejection::InProgress { lease_left }),
            },
            _ => OnReserve::Reject(Rejection::InProgress { lease_left }),
        },
        Ok(Reservation::Mismatch) => OnReserve::Reject(Rejection::Mismatch),
        Ok(Reservation::Completed(bytes)) => match StoredResponse::decode(&bytes) {
            Ok(stored) => OnReserve::Replay(stored),
            Err(corrupt) => {
                tracing::error!(
                    error = %corrupt,
                    "idempotency: a stored record does not decode; treated as a store failure"
                );
                OnReserve::StoreFailed(StoreError::protocol(corrupt.to_string()))
            }
        },
        Err(e) => OnReserve::StoreFailed(e),
    }
}

/// What the handler's response leads to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OnResponse {
    /// Read its body to store it.
    Capture,
    /// Send it as it is and release the key (a retry runs again).
    Release,
}

/// Decides from the status and announced size whether a response may be stored.
pub(super) fn after_run(cfg: &Config, status: StatusCode, size_lower: u64) -> OnResponse {
    if size_lower > cfg.max_stored_body as u64 {
        warn_too_large(cfg);
        return OnResponse::Release;
    }
    if cfg.policy.stores(status) {
        OnResponse::Capture
    } else {
        OnResponse::Release
    }
}

/// What reading the response body leads to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OnCapture {
    /// Store it, then answer with the bytes read.
    Store,
    /// Send what was read and the rest, and release the key.
    SendOn,
    /// The body failed: answer 500 and release the key.
    Failed,
}

/// Decides what happens to a response body that was read.
pub(super) fn after_capture<E>(cfg: &Config, ended: &Captured<E>, trailers: bool) -> OnCapture {
    match ended {
        Captured::Failed(_) => {
            tracing::warn!("idempotency: the response body failed; key released");
            OnCapture::Failed
        }
        Captured::Over => {
            warn_too_large(cfg);
            OnCapture::SendOn
        }
        Captured::Done if trailers => {
            tracing::debug!("idempotency: responses with trailers are not stored");
            OnCapture::SendOn
        }
        Captured::Done => OnCapture::Store,
    }
}

/// The outcome once the completion write answered. A record stored on
/// the master but not confirmed on the replicas asked for is still
/// `Stored`: the handler ran and its answer goes out; a warning says so.
pub(super) fn after_complete(cfg: &Config, written: Result<Written, StoreError>) -> Outcome {
    match written {
        Ok(Written::Stored) => Outcome::Stored,
        Ok(Written::Unconfirmed { acked }) => {
            cfg.unconfirmed(acked);
            Outcome::Stored
        }
        Ok(Written::Lost) => {
            tracing::warn!(
                scope = %cfg.scope,
                "idempotency: the lease lapsed before the response was stored \
                 (raise the lease); a retry may run again"
            );
            Outcome::NotStored
        }
        Err(e) => {
            cfg.store_failed(
                "storing the response",
                "the response was sent unstored; the key stays reserved until its lease lapses",
                &e,
            );
            Outcome::NotStored
        }
    }
}

/// A release that failed leaves the key reserved until its lease lapses.
pub(super) fn after_release(cfg: &Config, written: Result<bool, StoreError>) {
    if let Err(e) = written {
        cfg.store_failed("release", "the lease will lapse", &e);
    }
}

fn warn_too_large(cfg: &Config) {
    tracing::warn!(
        max_stored_body = cfg.max_stored_body,
        scope = %cfg.scope,
        "idempotency: the response is larger than max_stored_body; \
         sent without storing it, key released (a retry runs again)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::config::test_config as cfg;
    use bytes::Bytes;

    #[test]
    fn after_read_rejects_bodies_over_the_cap_or_failed() {
        assert_eq!(after_read(&Captured::<()>::Done, 8), None);
        assert_eq!(
            after_read(&Captured::<()>::Over, 8),
            Some(Rejection::TooLarge { max_body: 8 })
        );
        let r = after_read(&Captured::Failed(()), 8).unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn waiting_asks_again_with_back_off_until_its_end() {
        let start = Instant::now();
        let mut w = Wait::default();
        let max = Duration::from_millis(400);
        let mut now = start;
        let mut delays = Vec::new();
        while let Some(d) = w.next(max, now) {
            delays.push(d.as_millis());
            now += d;
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 90]);
        assert_eq!(now - start, max);
        assert_eq!(Wait::default().next(Duration::ZERO, start), None);
    }

    #[test]
    fn after_reserve_covers_every_answer() {
        let now = Instant::now();
        let run = |r, conflict| after_reserve(r, conflict, &mut Wait::default(), now);
        let lease_left = Duration::from_secs(3);
        assert!(matches!(
            run(Ok(Reservation::Reserved), Conflict::Reject),
            OnReserve::Run
        ));
        assert!(matches!(
            run(Ok(Reservation::InProgress { lease_left }), Conflict::Reject),
            OnReserve::Reject(Rejection::InProgress { .. })
        ));
        assert!(matches!(
            run(Ok(Reservation::InProgress { lease_left }), Conflict::Wait(Duration::from_secs(1))),
            OnReserve::AskAgain(d) if d == Duration::from_millis(10)
        ));
        assert!(matches!(
            run(Ok(Reservation::Mismatch), Conflict::Reject),
            OnReserve::Reject(Rejection::Mismatch)
        ));
        let stored = StoredResponse {
            status: StatusCode::CREATED,
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(b"x"),
        };
        assert!(matches!(
            run(Ok(Reservation::Completed(stored.encode())), Conflict::Reject),
            OnReserve::Replay(s) if s == stored
        ));
        assert!(matches!(
            run(
                Ok(Reservation::Completed(Bytes::from_static(b"junk"))),
                Conflict::Reject
            ),
            OnReserve::StoreFailed(_)
        ));
        assert!(matches!(
            run(Err(StoreError::circuit_open()), Conflict::Reject),
            OnReserve::StoreFailed(_)
        ));
    }

    #[test]
    fn after_run_stores_what_the_policy_and_size_allow() {
        let c = cfg(|b| b.max_stored_body(10));
        assert_eq!(after_run(&c, StatusCode::CREATED, 10), OnResponse::Capture);
        assert_eq!(after_run(&c, StatusCode::CREATED, 11), OnResponse::Release);
        assert_eq!(
            after_run(&c, StatusCode::INTERNAL_SERVER_ERROR, 0),
            OnResponse::Release
        );
        assert_eq!(after_run(&c, StatusCode::CONFLICT, 0), OnResponse::Release);
        let largest = cfg(|b| b.max_stored_body(u32::MAX as usize));
        let hint = u64::MAX;
        assert_eq!(
            after_run(&largest, StatusCode::OK, hint),
            OnResponse::Release
        );
    }

    #[test]
    fn after_capture_stores_only_whole_bodies_without_trailers() {
        let c = cfg(|b| b);
        assert_eq!(
            after_capture(&c, &Captured::<()>::Done, false),
            OnCapture::Store
        );
        assert_eq!(
            after_capture(&c, &Captured::<()>::Done, true),
            OnCapture::SendOn
        );
        assert_eq!(
            after_capture(&c, &Captured::<()>::Over, false),
            OnCapture::SendOn
        );
        assert_eq!(
            after_capture(&c, &Captured::Failed(()), false),
            OnCapture::Failed
        );
    }

    #[test]
    fn after_complete_reports_stored_only_when_written_under_the_lease() {
        let c = cfg(|b| b);
        assert_eq!(after_complete(&c, Ok(Written::Stored)), Outcome::Stored);
        let unconfirmed = Written::Unconfirmed { acked: Some(0) };
        assert_eq!(after_complete(&c, Ok(unconfirmed)), Outcome::Stored);
        assert_eq!(after_complete(&c, Ok(Written::Lost)), Outcome::NotStored);
        assert_eq!(
            after_complete(&c, Err(StoreError::circuit_open())),
            Outcome::NotStored
        );
    }
}
