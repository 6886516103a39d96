//! The lease of a reservation while its handler runs: renewed on a timer,
//! released when dropped (client gone, handler failed or panicked), handed
//! over to the completion write when the response is ready.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::time::{Instant, Sleep};

use super::fingerprint::{RecordKey, Token};
use super::store::IdempotencyHome;
use crate::error::StoreError;

type StoreFuture = BoxFuture<'static, Result<bool, StoreError>>;

/// A held reservation. Dropping it releases the record, unless it was
/// completed or lost.
pub(crate) struct Lease {
    store: Arc<dyn IdempotencyHome>,
    key: RecordKey,
    token: Token,
    lease: Duration,
    timer: Pin<Box<Sleep>>,
    renewing: Option<StoreFuture>,
    held: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl Lease {
    pub(crate) fn new(
        store: Arc<dyn IdempotencyHome>,
        key: RecordKey,
        token: Token,
        lease: Duration,
    ) -> Self {
        Self {
            store,
            key,
            token,
            lease,
            timer: Box::pin(tokio::time::sleep(lease / 3)),
            renewing: None,
            held: true,
        }
    }

    /// Renews the lease every third of it; never ready. A handler slower
    /// than a third of the lease costs one extra round trip per third.
    pub(crate) fn poll_renew(&mut self, cx: &mut Context<'_>) {
        while self.held {
            if let Some(fut) = self.renewing.as_mut() {
                let Poll::Ready(result) = fut.as_mut().poll(cx) else {
                    return;
                };
                self.renewing = None;
                match result {
                    Ok(true) => tracing::trace!("idempotency: lease renewed"),
                    Ok(false) => {
                        // Expired and perhaps taken: the completion will be fenced off.
                        tracing::warn!(
                            "idempotency: the lease lapsed while the handler ran; \
                             its response will not be stored (raise the lease)"
                        );
                        self.held = false;
                    }
                    Err(e) => tracing::warn!(error = %e, "idempotency: lease renewal failed"),
                }
                continue;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return;
            }
            self.timer.as_mut().reset(Instant::now() + self.lease / 3);
            self.renewing = Some(self.store.renew(&self.key, &self.token, self.lease));
        }
    }

    /// Hands the reservation to the completion write. When the lease was
    /// lost nothing is written, and the completion answers `Ok(false)`.
    pub(crate) fn complete(mut self, record: Bytes, ttl: Duration) -> Completion {
        if !self.held {
            return Completion { fut: None };
        }
        // From here the completion decides; a failed write lets the lease lapse.
        self.held = false;
        Completion {
            fut: Some(self.store.complete(&self.key, &self.token, record, ttl)),
        }
    }

    /// Releases the reservation; the caller awaits it before answering, so
    /// a client that got the answer and retries finds the key free.
    pub(crate) fn release(mut self) -> Completion {
        self.held = false;
        Completion {
            fut: Some(self.store.release(&self.key, &self.token)),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        // A memory store acts when called; a Redis release runs as a task.
        let release = self.store.release(&self.key, &self.token);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = release.await {
                        tracing::warn!(error = %e, "idempotency: release failed; the lease will lapse");
                    }
                });
            }
            Err(_) => {
                tracing::debug!("idempotency: no runtime to release on; the lease will lapse")
            }
        }
    }
}

/// The completion write (or a release). Finished in a task if the response
/// future is dropped first: the handler ran, its outcome must be kept.
pub(crate) struct Completion {
    fut: Option<StoreFuture>,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion").finish_non_exhaustive()
    }
}

impl Future for Completion {
    type Output = Result<bool, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        let result = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(result)
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let (Some(fut), Ok(rt)) = (self.fut.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(fut);
        }
    }
}
