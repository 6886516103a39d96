//! The lease of a reservation while its handler runs: renewed on a timer,
//! released when dropped (client gone, handler failed or panicked), handed
//! over to the completion write when the response is ready.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::time::{Instant, Sleep};

use super::config::Config;
use super::store::{Flag, Hold, Written};
use crate::error::StoreError;

/// A held reservation. Dropping it releases the record, unless it was
/// completed or lost.
pub(crate) struct Lease {
    config: Arc<Config>,
    hold: Hold,
    timer: Pin<Box<Sleep>>,
    renewing: Option<Flag>,
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
    pub(crate) fn new(config: Arc<Config>, hold: Hold) -> Self {
        let timer = Box::pin(tokio::time::sleep(config.lease / 3));
        Self {
            config,
            hold,
            timer,
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
                            scope = %self.config.scope,
                            "idempotency: the lease lapsed while the handler ran; \
                             its response will not be stored (raise the lease)"
                        );
                        self.held = false;
                    }
                    Err(e) => self.config.store_failed(
                        "lease renewal",
                        "renewal retried at the next third of the lease",
                        &e,
                    ),
                }
                continue;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return;
            }
            let lease = self.config.lease;
            self.timer.as_mut().reset(Instant::now() + lease / 3);
            self.renewing = Some(self.config.home.renew(&self.hold, lease));
        }
    }

    /// Hands the reservation to the completion write. When the lease was
    /// lost nothing is written, and the completion answers `Lost`.
    pub(crate) fn complete(mut self, record: Bytes) -> Completion<Written> {
        if !self.held {
            return Completion::new(Box::pin(std::future::ready(Ok(Written::Lost))));
        }
        // From here the completion decides; a failed write lets the lease lapse.
        self.held = false;
        let cfg = &self.config;
        let write = cfg
            .home
            .complete(&self.hold, record, cfg.record_ttl, cfg.replicas);
        Completion::new(write)
    }

    /// Releases the reservation; the caller awaits it before answering, so
    /// a client that got the answer and retries finds the key free.
    pub(crate) fn release(mut self) -> Completion<bool> {
        self.held = false;
        Completion::new(self.config.home.release(&self.hold))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        // A memory store acts when called; a Redis release runs as a task.
        let release = self.config.home.release(&self.hold);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let config = self.config.clone();
                rt.spawn(async move {
                    if let Err(e) = release.await {
                        config.store_failed("release", "the lease will lapse", &e);
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
pub(crate) struct Completion<T: Send + 'static> {
    fut: Option<BoxFuture<'static, Result<T, StoreError>>>,
}

impl<T: Send + 'static> Completion<T> {
    fn new(fut: BoxFuture<'static, Result<T, StoreError>>) -> Self {
        Self { fut: Some(fut) }
    }
}

impl<T: Send + 'static> std::fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Future for Completion<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self
            .fut
            .as_mut()
            .expect("Completion polled after completion");
        let result = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(result)
    }
}

impl<T: Send + 'static> Drop for Completion<T> {
    fn drop(&mut self) {
        if let (Some(fut), Ok(rt)) = (self.fut.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = fut.await;
            });
        }
    }
}
