//! Upstream TCP connections read in large pieces. TLS reads one record (at most 16 KiB) per
//! read from its transport, so a large answer costs one system call per record; with a read
//! buffer under TLS, one call takes everything the kernel holds (up to [`READ_AHEAD`]) and
//! TLS takes its records from memory.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::BufReader;
use tokio::net::TcpStream;

/// How much one read from an upstream connection may take.
pub const READ_AHEAD: usize = 128 * 1024;

/// A connector whose connections read ahead (see the module).
#[derive(Clone)]
pub struct ReadAhead<C>(pub C);

impl<C> tower_service::Service<Uri> for ReadAhead<C>
where
    C: tower_service::Service<Uri, Response = TokioIo<TcpStream>>,
    C::Future: Send + 'static,
{
    type Response = Buffered;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Buffered, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            Ok(Buffered(TokioIo::new(BufReader::with_capacity(
                READ_AHEAD, tcp,
            ))))
        })
    }
}

/// A TCP connection with a read buffer; writes go straight through.
pub struct Buffered(TokioIo<BufReader<TcpStream>>);

impl hyper::rt::Read for Buffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Buffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for Buffered {
    fn connected(&self) -> Connected {
        self.0.inner().get_ref().connected()
    }
}
