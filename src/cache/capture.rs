//! [`Capture`]: the origin's body read into the entry ahead of the client.
//!
//! The leader of a fill reads the whole body (up to the size cap) before it
//! answers its client, so the entry is written, and the followers served,
//! as soon as the origin has answered: the fill never runs at the speed of
//! the client reading it, and a client that stops reading holds no lock.
//! The client then gets the bytes from the entry. Past the cap, what was
//! read is sent first and the rest streams through, unstored.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::response::Parts;
use http::Response;
use http_body::{Body, Frame};

use super::fill::{Fill, FillCtx};
use super::origin::{serve_stale_on_error, Failed};
use super::response::{cache_status, refusal, Refusal, CACHE_STATUS};

/// The chunks read so far, up to the cap.
#[derive(Debug)]
pub(crate) struct Chunks {
    parts: Vec<Bytes>,
    len: usize,
    cap: usize,
}

/// Why reading ahead stopped before the end.
#[derive(Debug)]
pub(crate) struct Over {
    /// Every frame read, to send first.
    pub(crate) frames: Vec<Frame<Bytes>>,
    pub(crate) why: &'static str,
}

impl Chunks {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            parts: Vec::new(),
            len: 0,
            cap,
        }
    }

    /// Keeps a data frame (a reference, not a copy). Past the cap, or at
    /// trailers (not stored), gives back everything read, to replay.
    pub(crate) fn push(&mut self, frame: Frame<Bytes>) -> Result<(), Over> {
        let why = match frame.data_ref() {
            Some(d) if self.len + d.len() <= self.cap => {
                self.len += d.len();
                self.parts.push(d.clone());
                return Ok(());
            }
            Some(_) => "too-large",
            None => "trailers",
        };
        let mut frames: Vec<_> = self.parts.drain(..).map(Frame::data).collect();
        frames.push(frame);
        Err(Over { frames, why })
    }
}

/// How reading ahead ended.
pub(crate) enum Read<E> {
    Ended,
    Over(Over),
    Failed(E),
}

/// A fill reading the origin's body.
pub(crate) struct Capture {
    fill: Fill,
    ctx: FillCtx,
    chunks: Chunks,
    /// `Cache-Status` parameters: what was forwarded, and what to add once stored.
    forwarded: String,
    stored: String,
}

impl Capture {
    pub(crate) fn new(
        fill: Fill,
        ctx: FillCtx,
        forwarded: String,
        stored: String,
        cap: usize,
    ) -> Self {
        Self {
            fill,
            ctx,
            chunks: Chunks::new(cap),
            forwarded,
            stored,
        }
    }

    /// Reads `body` until it ends, passes the cap, or fails.
    pub(crate) fn poll_read<B>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Read<B::Error>>
    where
        B: Body<Data = Bytes>,
    {
        loop {
            match ready!(body.as_mut().poll_frame(cx)) {
                None => return Poll::Ready(Read::Ended),
                Some(Err(e)) => return Poll::Ready(Read::Failed(e)),
                Some(Ok(frame)) => {
                    if let Err(over) = self.chunks.push(frame) {
                        return Poll::Ready(Read::Over(over));
                    }
                    if body.is_end_stream() {
                        return Poll::Ready(Read::Ended);
                    }
                }
            }
        }
    }

    /// The client's response once reading stopped.
    pub(crate) fn respond<B: Body>(
        self,
        mut parts: Parts,
        body: Pin<Box<B>>,
        read: Read<B::Error>,
    ) -> Response<crate::ResponseBody<B>> {
        let name = self.fill.leader.shared.cfg.name.clone();
        let (body, params) = match read {
            Read::Ended => {
                let params = if self.fill.will_store() {
                    format!("{}{}", self.forwarded, self.stored)
                } else {
                    format!("{}; detail=store-error", self.forwarded)
                };
                let mut bytes = self.fill.finish(&self.chunks.parts);
                // The whole response for a client that asked for a range:
                // cut it (a 206 is already the origin's answer to it).
                let ranges = &self.ctx.cond.ranges;
                let whole = parts.status == http::StatusCode::OK;
                if let Some((partial, body)) = whole
                    .then(|| ranges.apply(parts.status, &mut parts.headers, &bytes))
                    .flatten()
                {
                    parts.status = partial;
                    bytes = body;
                }
                (crate::ResponseBody::full(bytes), params)
            }
            Read::Over(over) => {
                self.fill.pass();
                let params = format!("{}; detail={}", self.forwarded, over.why);
                (crate::ResponseBody::prefixed(over.frames, body), params)
            }
            // The origin failed mid-body, before the client saw a byte:
            // stale if allowed, else 502. Nothing is stored.
            Read::Failed(_) => {
                let failed = Failed::Unreachable(None);
                let res = serve_stale_on_error(&self.fill.leader, &self.ctx, failed)
                    .unwrap_or_else(|| refusal(&name, Refusal::BadGateway, self.ctx.grpc));
                return res.map(crate::ResponseBody::full);
            }
        };
        parts
            .headers
            .append(CACHE_STATUS.clone(), cache_status(&name, &params));
        Response::from_parts(parts, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn chunks_are_kept_up_to_the_cap_then_replayed() {
        let mut c = Chunks::new(5);
        assert!(c.push(data("ab")).is_ok());
        assert!(c.push(data("cde")).is_ok());
        assert_eq!(c.parts, vec!["ab", "cde"]);
        let over = c.push(data("f")).unwrap_err();
        assert_eq!(over.why, "too-large");
        let replay: Vec<_> = over
            .frames
            .iter()
            .map(|f| f.data_ref().unwrap().clone())
            .collect();
        assert_eq!(replay, vec!["ab", "cde", "f"]);
        let mut c = Chunks::new(5);
        c.push(data("ab")).unwrap();
        let over = c.push(Frame::trailers(http::HeaderMap::new())).unwrap_err();
        assert_eq!(over.why, "trailers");
        assert_eq!(over.frames.len(), 2);
        assert!(over.frames[1].is_trailers());
    }
}
