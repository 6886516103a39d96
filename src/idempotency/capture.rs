//! Reading a body up to a cap: the request (to fingerprint it) and the
//! response (to store it). Never more than the cap plus one frame is held.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame};

/// How reading ended.
pub(crate) enum Captured<E> {
    /// The body ended within the cap.
    Done,
    /// The body passed the cap; what was read is kept, the rest is unread.
    Over,
    /// The body failed.
    Failed(E),
}

#[derive(Debug)]
pub(crate) struct Capture {
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    trailers: Option<HeaderMap>,
}

impl Capture {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
            cap,
            trailers: None,
        }
    }

    /// Reads frames from `body` until it ends, fails or passes the cap.
    pub(crate) fn poll<B>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Captured<B::Error>>
    where
        B: Body<Data = Bytes> + ?Sized,
    {
        loop {
            let frame = match ready!(body.as_mut().poll_frame(cx)) {
                None => return Poll::Ready(Captured::Done),
                Some(Err(e)) => return Poll::Ready(Captured::Failed(e)),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    self.len += data.len();
                    if !data.is_empty() {
                        self.chunks.push(data);
                    }
                    if self.len > self.cap {
                        return Poll::Ready(Captured::Over);
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        self.trailers.get_or_insert_with(HeaderMap::new).extend(t);
                    }
                }
            }
        }
    }

    pub(crate) fn has_trailers(&self) -> bool {
        self.trailers.is_some()
    }

    /// The bytes read, in one piece, and the trailers.
    pub(crate) fn take(&mut self) -> (Bytes, Option<HeaderMap>) {
        let data = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut buf = BytesMut::with_capacity(self.len);
                for c in self.chunks.drain(..) {
                    buf.extend_from_slice(&c);
                }
                buf.freeze()
            }
        };
        (data, self.trailers.take())
    }

    /// What was read, as frames to send before the rest of the body.
    pub(crate) fn into_frames(self) -> Vec<Frame<Bytes>> {
        let mut frames: Vec<_> = self.chunks.into_iter().map(Frame::data).collect();
        frames.extend(self.trailers.map(Frame::trailers));
        frames
    }
}
