//! The one body type of the crate: the inner service's body, or bytes a
//! layer produced or read itself (a rejection, a replay, a cache hit, a
//! request body read to fingerprint it).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that passed through one of this crate's layers.
    ///
    /// It needs nothing of the inner body type but `Body<Data = Bytes>`: no
    /// `Default`, no `From<Bytes>`, no `Sync`; tonic's and axum's bodies fit.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        // Trailers only where a layer read a body that had them (boxed: rare).
        Full { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
        // Frames a layer read ahead (a capture over its cap), then the rest.
        Prefixed { frames: VecDeque<Frame<Bytes>>, body: Pin<Box<B>> },
    }
}

impl<B> ResponseBody<B> {
    /// The inner service's body, passed through.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body of these bytes.
    pub fn full(data: Bytes) -> Self {
        Self::buffered(data, None)
    }

    /// A body a layer read whole: its bytes, then its trailers.
    pub(crate) fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
                trailers: trailers.map(Box::new),
            },
        }
    }

    /// The frames a layer already read from `body`, then the rest of `body`.
    pub(crate) fn prefixed(frames: Vec<Frame<Bytes>>, body: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Prefixed {
                frames: frames.into(),
                body,
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Full { data, .. } => f
                .debug_struct("ResponseBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Prefixed { frames, .. } => f
                .debug_struct("ResponseBody::Prefixed")
                .field("frames", &frames.len())
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
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data, trailers } => Poll::Ready(match data.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => trailers.take().map(|t| Ok(Frame::trailers(*t))),
            }),
            KindProj::Prefixed { frames, body } => match frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => body.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Prefixed { frames, body } => frames.is_empty() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, Bytes::len) as u64)
            }
            Kind::Prefixed { frames, body } => {
                let read: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + read);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + read);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn full_and_inner_bodies_yield_their_bytes() {
        let b: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::from_static(b"abc"));
        assert_eq!(b.size_hint().exact(), Some(3));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abc");
        let b = ResponseBody::inner(Full::new(Bytes::from_static(b"xyz")));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "xyz");
        let e: ResponseBody<Full<Bytes>> = ResponseBody::empty();
        assert!(e.is_end_stream());
        let p = ResponseBody::prefixed(
            vec![Frame::data(Bytes::from_static(b"ab"))],
            Box::pin(Full::new(Bytes::from_static(b"cd"))),
        );
        assert_eq!(p.size_hint().exact(), Some(4));
        assert_eq!(p.collect().await.unwrap().to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn buffered_bodies_yield_data_then_trailers() {
        let mut t = HeaderMap::new();
        t.insert("x-t", "1".parse().unwrap());
        let b: ResponseBody<Full<Bytes>> =
            ResponseBody::buffered(Bytes::from_static(b"ab"), Some(t));
        assert_eq!(b.size_hint().exact(), Some(2));
        assert!(!b.is_end_stream());
        let c = b.collect().await.unwrap();
        assert_eq!(c.trailers().unwrap()["x-t"], "1");
        assert_eq!(c.to_bytes(), "ab");
    }
}
