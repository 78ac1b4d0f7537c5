//! A user-space TCP proxy that delays one direction of a connection by a settable time
//! (netem is not available here). Every byte read from the client is written to the server no
//! earlier than `delay` after it was read, in order; the answer direction is not delayed. A
//! follower whose connections to the leader pass through it therefore sees every fetch round
//! trip lengthened by `delay`, whatever the load.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A running proxy: accepts on `addr`, forwards to its target.
#[derive(Debug)]
pub struct DelayProxy {
    /// Where it accepts connections.
    pub addr: SocketAddr,
    delay_us: Arc<AtomicU64>,
}

impl DelayProxy {
    /// Starts a proxy on `listen` forwarding to `target` on the current tokio runtime, until
    /// `stop` turns true.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        stop: watch::Receiver<bool>,
    ) -> Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("proxy bind {listen}"))?;
        let addr = listener.local_addr()?;
        let delay_us = Arc::new(AtomicU64::new(0));
        let d = delay_us.clone();
        tokio::spawn(async move {
            let mut stop_accept = stop.clone();
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = stop_accept.changed() => break,
                };
                let Ok((client, _)) = conn else { continue };
                tokio::spawn(relay(client, target, d.clone(), stop.clone()));
            }
        });
        Ok(DelayProxy { addr, delay_us })
    }

    /// Sets the delay of the client-to-server direction (applies to bytes read from now on).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }
}

async fn relay(
    client: TcpStream,
    target: SocketAddr,
    delay_us: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Client to server: a reader stamps each chunk with its due time, a writer sends it then.
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let upstream_read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now()
                        + Duration::from_micros(delay_us.load(Ordering::Relaxed));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let upstream_write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if sw.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        _ = async { tokio::join!(upstream_read, upstream_write, downstream) } => {}
        _ = stop.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn rtt(c: &mut TcpStream) -> Duration {
        let t = Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        t.elapsed()
    }

    #[test]
    fn delays_the_request_direction() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let echo_addr = echo.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = echo.accept().await.unwrap();
                let mut b = [0u8; 4];
                while s.read_exact(&mut b).await.is_ok() {
                    if s.write_all(&b).await.is_err() {
                        break;
                    }
                }
            });
            let (_stop_tx, stop_rx) = watch::channel(false);
            let p = DelayProxy::start("127.0.0.1:0".parse().unwrap(), echo_addr, stop_rx)
                .await
                .unwrap();
            let mut c = TcpStream::connect(p.addr).await.unwrap();
            let fast = rtt(&mut c).await;
            p.set_delay(Duration::from_millis(30));
            let slow = rtt(&mut c).await;
            assert!(slow >= Duration::from_millis(30), "{slow:?}");
            assert!(fast < Duration::from_millis(30), "{fast:?}");
        });
    }
}
