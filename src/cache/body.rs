//! [`ResponseBody`]: the origin's body (streamed, possibly captured for the
//! cache on the way), or the bytes of a stored entry.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::fill::Fill;

pin_project! {
    /// The body of a response from [`ResponseCache`](super::ResponseCache).
    ///
    /// A hit is a slice of the stored entry (no copy). A miss streams the
    /// origin's body to the client as it comes, keeping a reference to each
    /// chunk; when the body ends within the size cap the chunks become the
    /// entry, past the cap they are dropped and the rest passes through.
    /// Needs nothing of the inner body but `Body<Data = Bytes>`.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        // The origin's body passed through, or a stored entry's bytes.
        Plain { #[pin] body: crate::ResponseBody<B> },
        Capture { #[pin] body: B, capture: Option<Capture> },
    }
}

pub(crate) struct Capture {
    fill: Fill,
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Plain {
                body: crate::ResponseBody::inner(body),
            },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Plain {
                body: crate::ResponseBody::full(data),
            },
        }
    }

    /// Streams `body` while capturing it for `fill`, up to `cap` bytes.
    pub(crate) fn capture(body: B, fill: Fill, cap: usize) -> Self
    where
        B: Body,
    {
        if body.size_hint().lower() > cap as u64 {
            fill.pass();
            return Self::inner(body);
        }
        if body.is_end_stream() {
            fill.finish(&[]);
            return Self::inner(body);
        }
        let capture = Capture {
            fill,
            chunks: Vec::new(),
            len: 0,
            cap,
        };
        Self {
            kind: Kind::Capture {
                body,
                capture: Some(capture),
            },
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Plain { body } => body.fmt(f),
            Kind::Capture { capture, .. } => f
                .debug_struct("ResponseBody::Capture")
                .field("captured", &capture.as_ref().map(|c| c.len))
                .finish(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Plain { body } => body.poll_frame(cx),
            KindProj::Capture { mut body, capture } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => match (f.data_ref(), capture.as_mut()) {
                        (Some(data), Some(c)) if c.len + data.len() <= c.cap => {
                            c.len += data.len();
                            c.chunks.push(data.clone());
                        }
                        // Over the cap: stop capturing, the rest streams through.
                        (Some(_), Some(_)) => {
                            if let Some(c) = capture.take() {
                                c.fill.pass();
                            }
                        }
                        (Some(_), None) => {}
                        // Trailers are not stored: neither is the response.
                        (None, _) => {
                            if let Some(c) = capture.take() {
                                c.fill.pass();
                            }
                        }
                    },
                    // An error mid-body: nothing is stored, followers ask again.
                    Some(Err(_)) => drop(capture.take()),
                    None => {}
                }
                if frame.is_none() || body.is_end_stream() {
                    if let Some(c) = capture.take() {
                        c.fill.finish(&c.chunks);
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain { body } => body.is_end_stream(),
            Kind::Capture { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain { body } => body.size_hint(),
            Kind::Capture { body, .. } => body.size_hint(),
        }
    }
}
