//! A request stream that was reset is a broken stream, never a clean end.
//!
//! hyper hands a handler an HTTP/2 `RST_STREAM(NO_ERROR)` from the client as an
//! ordinary end of the request body, exactly like the client's half-close (an
//! `END_STREAM` flag). For a lease stream the two mean opposite things: FTL's protocol
//! releases with the half-close, while a reset is what an L7 proxy sends upstream when
//! its downstream client died or was cut off, and that client may still act on the time
//! it was promised. hyper still knows the difference when the body ends: its
//! `is_end_stream` is true only when `END_STREAM` was received (also when a reset came
//! after it). And tonic, for its part, turns a request body *error* caused by
//! `RST_STREAM(CANCEL)` into a clean end too. [`mark_resets`] wraps every HTTP/2
//! request body so that an end without `END_STREAM` is an error, and every error one
//! that tonic passes on as an error; the services treat both as a broken stream (see
//! [`give_back`](super::give_back)).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{Request, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};

/// The error a reset or broken request stream reads as.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Broken {
    /// Ended without `END_STREAM` (a reset hyper reports as an end).
    #[error("the client reset the stream before ending it")]
    Reset,
    /// Failed: any reset code, GOAWAY, a transport error. Its cause is kept as text
    /// only: tonic turns a request body error that carries an HTTP/2 `CANCEL` into a
    /// clean end, which a broken stream must never read as.
    #[error("the request stream broke: {0}")]
    Failed(String),
}

/// Marks the end of an HTTP/2 request body that was reset rather than ended (an axum
/// middleware for every route; HTTP/1.1 bodies pass unchanged).
pub(crate) async fn mark_resets(request: Request<Body>) -> Request<Body> {
    if request.version() == Version::HTTP_2 {
        request.map(|body| {
            Body::new(EndChecked {
                inner: body,
                done: false,
            })
        })
    } else {
        request
    }
}

/// A request body whose end is an error unless the client ended it.
struct EndChecked {
    inner: Body,
    done: bool,
}

impl HttpBody for EndChecked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.done = true;
                if self.inner.is_end_stream() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(axum::Error::new(Broken::Reset))))
                }
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(axum::Error::new(Broken::Failed(e.to_string())))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
