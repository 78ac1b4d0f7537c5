//! Sockets: SO_REUSEPORT listeners, readiness-driven sendfile for zero-copy fetch.

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Binds a non-blocking TCP listener with `SO_REUSEPORT`, so every shard can bind its own
/// listener on the same port and the kernel spreads incoming connections across them.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
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
        let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
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
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let b = reuseport_listener(a.local_addr().unwrap(), 16).unwrap();
        assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
    }
}
