//! Sockets: SO_REUSEPORT listeners, readiness-driven sendfile for zero-copy fetch.

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A socket bound with `SO_REUSEPORT` that does not accept yet: the broker binds every shard's
/// socket at start-up (so a taken port fails fast) but listens only once every shard has opened
/// its partitions, so no client connects to a broker that cannot serve it yet.
#[derive(Debug)]
pub struct BoundSocket(Socket);

impl BoundSocket {
    /// The bound address (the chosen port when binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
    }

    /// Starts listening and hands back a non-blocking listener.
    pub fn listen(self, backlog: i32) -> io::Result<std::net::TcpListener> {
        self.0.listen(backlog)?;
        Ok(self.0.into())
    }
}

/// Binds a non-blocking TCP socket with `SO_REUSEPORT`, so every shard can bind its own
/// listener on the same port and the kernel spreads incoming connections across them.
pub fn reuseport_socket(addr: SocketAddr) -> io::Result<BoundSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(BoundSocket(socket))
}

/// Fails with `AddrInUse` when another socket listens on `addr`. `SO_REUSEPORT` would
/// otherwise let a second broker bind the same port and silently share its clients; a probe
/// without it (but with `SO_REUSEADDR`, so connections of a previous run in TIME_WAIT do not
/// count) fails exactly when a listener holds the port.
pub fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())
}

/// Sends `len` bytes of `file` starting at `position` to `stream` with `sendfile(2)`,
/// awaiting writability whenever the socket buffer is full: the shard thread never blocks
/// on the socket, and the kernel moves page-cache pages without a user-space copy. A slow
/// consumer therefore costs no broker memory: bytes leave the page cache at the socket's pace.
pub async fn sendfile_all(
    stream: &TcpStream,
    file: BorrowedFd<'_>,
    position: u64,
    len: usize,
) -> io::Result<()> {
    let mut offset = i64::try_from(position)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file position too large"))?;
    let mut remaining = len;
    while remaining > 0 {
        stream.writable().await?;
        let result = stream.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile(stream, file, Some(&mut offset), remaining)
                .map_err(io::Error::from)
        });
        match result {
            Ok(0) => {
                // The file ended before the slice did: the segment was truncated under us.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "segment shorter than the fetched slice",
                ));
            }
            Ok(n) => remaining -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads `len` bytes of `file` at `position` (the copy fallback where sendfile cannot go,
/// such as a TLS connection).
pub fn read_range(file: BorrowedFd<'_>, position: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let offset = i64::try_from(position + done as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file position too large"))?;
        let n = nix::sys::uio::pread(file, &mut buf[done..], offset).map_err(io::Error::from)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment shorter than the fetched slice",
            ));
        }
        done += n;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn sendfile_moves_a_file_range_to_a_socket() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let listener = reuseport_socket("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .listen(16)
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            got
        });
        crate::io::runtime::block_on(async {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            sendfile_all(&stream, file.as_fd(), 1000, 250_000)
                .await
                .unwrap();
        });
        let got = reader.join().unwrap();
        assert_eq!(got, &data[1000..251_000]);
    }

    #[test]
    fn two_listeners_share_a_port() {
        let a = reuseport_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = reuseport_socket(a.local_addr().unwrap()).unwrap();
        assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
        let (a, b) = (a.listen(16).unwrap(), b.listen(16).unwrap());
        assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
    }

    #[test]
    fn a_port_held_by_a_listener_is_not_free() {
        let held = reuseport_socket("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .listen(16)
            .unwrap();
        let addr = held.local_addr().unwrap();
        let err = ensure_port_free(addr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(held);
        ensure_port_free(addr).unwrap();
    }
}
