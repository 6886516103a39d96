//! [`RequestBody`]: what the inner service receives.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::ResponseBody;

pin_project! {
    /// The request body the inner service of an
    /// [`Idempotency`](super::Idempotency) receives: the client's body passed
    /// through (methods the layer does not cover, requests without a key),
    /// or the bytes the layer read to fingerprint the request.
    ///
    /// It is `Body<Data = Bytes>` with the client body's error type, so axum
    /// routers, tonic and hyper services accept it as they accept any body.
    /// Request trailers are kept. (The crate's one body type under a name
    /// that says which way it flows.)
    pub struct RequestBody<B> {
        #[pin]
        body: ResponseBody<B>,
    }
}

impl<B> RequestBody<B> {
    /// The client's body, passed through.
    pub fn streaming(body: B) -> Self {
        Self {
            body: ResponseBody::inner(body),
        }
    }

    /// A body read whole: its bytes and trailers.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            body: ResponseBody::buffered(data, trailers),
        }
    }
}

impl<B> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RequestBody").field(&self.body).finish()
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
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
