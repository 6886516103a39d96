//! [`RequestBody`]: what the inner service receives.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service of an
    /// [`Idempotency`](super::Idempotency) receives: the client's body passed
    /// through (methods the layer does not cover, requests without a key),
    /// or the bytes the layer read to fingerprint the request.
    ///
    /// It is `Body<Data = Bytes>` with the client body's error type, so axum
    /// routers, tonic and hyper services accept it as they accept any body.
    /// Request trailers are kept.
    pub struct RequestBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Streaming { #[pin] body: B },
        Buffered { data: Option<Bytes>, trailers: Option<HeaderMap> },
    }
}

impl<B> RequestBody<B> {
    /// The client's body, passed through.
    pub fn streaming(body: B) -> Self {
        Self {
            kind: Kind::Streaming { body },
        }
    }

    /// A body read whole: its bytes and trailers.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }
}

impl<B> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Streaming { .. } => f.write_str("RequestBody::Streaming"),
            Kind::Buffered { data, .. } => f
                .debug_struct("RequestBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B> Body for RequestBody<B>
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
            KindProj::Streaming { body } => body.poll_frame(cx),
            KindProj::Buffered { data, trailers } => Poll::Ready(match data.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Streaming { body } => body.is_end_stream(),
            Kind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Streaming { body } => body.size_hint(),
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, Bytes::len) as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn buffered_bodies_yield_data_then_trailers() {
        let mut t = HeaderMap::new();
        t.insert("x-t", "1".parse().unwrap());
        let b: RequestBody<Full<Bytes>> = RequestBody::buffered(Bytes::from_static(b"ab"), Some(t));
        assert_eq!(b.size_hint().exact(), Some(2));
        let c = b.collect().await.unwrap();
        assert_eq!(c.trailers().unwrap()["x-t"], "1");
        assert_eq!(c.to_bytes(), "ab");
        let s = RequestBody::streaming(Full::new(Bytes::from_static(b"xy")));
        assert_eq!(s.collect().await.unwrap().to_bytes(), "xy");
    }
}
