//! [`CaptureBody`]: the origin's body on its way to the client, captured
//! for the cache as it streams.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::fill::Fill;

pin_project! {
    /// The origin's body, streamed to the client as it comes; while a fill
    /// is on, each chunk is also kept (a reference, not a copy), and when
    /// the body ends within the size cap the chunks become the entry. Past
    /// the cap they are dropped and the rest passes through.
    ///
    /// The body of a [`ResponseCache`](super::ResponseCache)'s response is
    /// a [`ResponseBody`](crate::ResponseBody) of it: hits are the stored
    /// bytes. Needs nothing of the inner body but `Body<Data = Bytes>`.
    pub struct CaptureBody<B> {
        #[pin]
        body: B,
        capture: Option<Capture>,
    }
}

struct Capture {
    fill: Fill,
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
}

impl<B> CaptureBody<B> {
    /// `body`, passed through without capturing.
    pub(crate) fn plain(body: B) -> Self {
        Self {
            body,
            capture: None,
        }
    }

    /// Streams `body` while capturing it for `fill`, up to `cap` bytes.
    pub(crate) fn capture(body: B, fill: Fill, cap: usize) -> Self
    where
        B: Body,
    {
        if body.size_hint().lower() > cap as u64 {
            fill.pass();
            return Self::plain(body);
        }
        if body.is_end_stream() {
            fill.finish(&[]);
            return Self::plain(body);
        }
        let capture = Capture {
            fill,
            chunks: Vec::new(),
            len: 0,
            cap,
        };
        Self {
            body,
            capture: Some(capture),
        }
    }
}

impl<B> std::fmt::Debug for CaptureBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureBody")
            .field("captured", &self.capture.as_ref().map(|c| c.len))
            .finish()
    }
}

impl<B> Body for CaptureBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        let capture = this.capture;
        if capture.is_none() {
            return Poll::Ready(frame);
        }
        match &frame {
            Some(Ok(f)) => match (f.data_ref(), capture.as_mut()) {
                (Some(data), Some(c)) if c.len + data.len() <= c.cap => {
                    c.len += data.len();
                    c.chunks.push(data.clone());
                }
                // Over the cap, or trailers (not stored): the response is
                // not stored, the rest streams through.
                _ => {
                    if let Some(c) = capture.take() {
                        c.fill.pass();
                    }
                }
            },
            // An error mid-body: nothing is stored, followers ask again.
            Some(Err(_)) => drop(capture.take()),
            None => {}
        }
        if frame.is_none() || this.body.is_end_stream() {
            if let Some(c) = capture.take() {
                c.fill.finish(&c.chunks);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body of the cache's responses: the origin's (perhaps captured), or
/// stored bytes.
pub(crate) type CacheBody<B> = crate::ResponseBody<CaptureBody<B>>;

/// The origin's body, passed through.
pub(crate) fn passed<B>(body: B) -> CacheBody<B> {
    crate::ResponseBody::inner(CaptureBody::plain(body))
}
