//! Body types of the proxy: the boxed body every forwarded message uses, and the mirror
//! tee that copies a request body to mirror consumers without ever slowing the request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Error type of forwarded bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every forwarded request and response.
pub type OutBody = BoxBody<Bytes, BoxError>;

/// Boxes any body into an [`OutBody`].
pub fn boxed<B>(body: B) -> OutBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// An empty body.
pub fn empty() -> OutBody {
    boxed(http_body_util::Empty::<Bytes>::new())
}

/// A short text body (error responses, admin answers).
pub fn text(s: impl Into<Bytes>) -> OutBody {
    boxed(http_body_util::Full::new(s.into()))
}

/// How many frames a mirror copy may lag behind the real request before it is dropped.
pub const MIRROR_BUFFER_FRAMES: usize = 32;

/// What travels to a mirror copy.
enum Copy {
    Frame(Frame<Bytes>),
    End,
}

/// The sending half of one mirror copy.
pub struct CopySender {
    tx: mpsc::Sender<Copy>,
    dropped: Counter,
}

/// Creates a copy channel: the sender goes into a [`Tee`], the body into the mirror request.
pub fn copy_channel(dropped: Counter) -> (CopySender, MirrorBody) {
    let (tx, rx) = mpsc::channel(MIRROR_BUFFER_FRAMES);
    (CopySender { tx, dropped }, MirrorBody { rx, ended: false })
}

/// Wraps the real request body; each frame also goes to every copy that keeps up.
/// A copy whose buffer is full is cut off (its request fails, the drop is counted):
/// the real request never waits for a mirror.
pub struct Tee {
    inner: OutBody,
    copies: Vec<CopySender>,
}

impl Tee {
    /// Tees `inner` into `copies`.
    pub fn new(inner: OutBody, mut copies: Vec<CopySender>) -> Tee {
        if inner.is_end_stream() {
            // hyper may never poll an empty body: finish the copies now.
            for copy in copies.drain(..) {
                let _ = copy.tx.try_send(Copy::End);
            }
        }
        Tee { inner, copies }
    }

    fn fan_out(&mut self, frame: &Frame<Bytes>) {
        self.copies.retain(|copy| {
            let item = if let Some(data) = frame.data_ref() {
                Frame::data(data.clone())
            } else if let Some(trailers) = frame.trailers_ref() {
                Frame::trailers(trailers.clone())
            } else {
                return true;
            };
            match copy.tx.try_send(Copy::Frame(item)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    copy.dropped.inc();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => this.fan_out(frame),
            Poll::Ready(None) => {
                for copy in this.copies.drain(..) {
                    if copy.tx.try_send(Copy::End).is_err() {
                        copy.dropped.inc();
                    }
                }
            }
            // An error or a cut-off copy: dropping the senders aborts the copies.
            Poll::Ready(Some(Err(_))) => this.copies.clear(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of a mirror copy: ends cleanly only if the whole original body was copied.
pub struct MirrorBody {
    rx: mpsc::Receiver<Copy>,
    ended: bool,
}

/// A mirror copy that could not be completed.
#[derive(Debug, thiserror::Error)]
#[error("mirror copy cut off: the mirror consumer fell behind or the request failed")]
pub struct CopyCutOff;

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Copy::Frame(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Copy::End)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => Poll::Ready(Some(Err(Box::new(CopyCutOff)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A body that yields its chunks one frame at a time.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(n: usize) -> OutBody {
        boxed(Chunks((0..n).map(|i| Bytes::from(format!("chunk{i};"))).collect()))
    }

    #[tokio::test]
    async fn copies_follow_the_body_and_end_cleanly() {
        let (tx, copy) = copy_channel(Counter::default());
        let real = Tee::new(chunks(3), vec![tx]).collect().await.unwrap().to_bytes();
        let copied = copy.collect().await.unwrap().to_bytes();
        assert_eq!(real, "chunk0;chunk1;chunk2;");
        assert_eq!(copied, real);
    }

    #[tokio::test]
    async fn a_slow_copy_is_cut_off_and_the_request_is_not() {
        let dropped = Counter::default();
        let (tx, copy) = copy_channel(dropped.clone());
        let n = MIRROR_BUFFER_FRAMES * 3;
        let real = Tee::new(chunks(n), vec![tx]).collect().await.unwrap().to_bytes();
        assert!(real.ends_with(format!("chunk{};", n - 1).as_bytes()));
        assert_eq!(dropped.get(), 1);
        assert!(copy.collect().await.is_err(), "a cut-off copy must not look complete");
    }

    #[tokio::test]
    async fn an_empty_body_ends_its_copies_at_once() {
        let (tx, copy) = copy_channel(Counter::default());
        let _tee = Tee::new(empty(), vec![tx]);
        assert!(copy.collect().await.unwrap().to_bytes().is_empty());
    }
}
