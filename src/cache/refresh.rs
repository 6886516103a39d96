//! `stale-while-revalidate` in the background (RFC 5861 §3): the request
//! that takes the fill lock for an entry within its window is answered
//! with the stale entry at once, like every other request meanwhile, and
//! its conditional request runs in a task of its own; the entry it
//! refreshes (or replaces) is written as any fill is. One refresh per
//! entry runs across the fleet: the others find the lock held.

use std::future::Future;

use bytes::Bytes;
use http::Response;
use http_body::Body;

use super::fill::FillCtx;
use super::leader::Leader;
use super::origin::{on_origin, Answer};
use super::shared::spawn;

/// Runs the origin call `fut` of a refresh to its end in the background.
/// If it fails, the lock is released and the entry stays as it was.
pub(crate) fn spawn_refresh<F, R, E>(fut: F, leader: Leader, ctx: FillCtx)
where
    F: Future<Output = Result<Response<R>, E>> + Send + 'static,
    R: Body<Data = Bytes> + Send + 'static,
    R::Error: Send,
    E: Send + 'static,
{
    spawn(async move {
        let Ok(res) = fut.await else {
            return;
        };
        if let Answer::Capture(mut c, parts, body) = on_origin(leader, res, ctx) {
            let mut body = Box::pin(body);
            let read = std::future::poll_fn(|cx| c.poll_read(body.as_mut(), cx)).await;
            drop(c.respond(parts, body, read));
        }
    });
}
