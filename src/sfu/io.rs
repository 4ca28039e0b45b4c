//! The thin I/O adapter: one UDP socket, one thread, one `Engine`.
//!
//! The engine is single-owner state, so it runs on its own OS thread with a
//! current-thread tokio runtime: no locks on the per-packet path, and media
//! never competes with DICOM receive or HTTP for the shared runtime's
//! workers. Commands from signaling/API arrive on a bounded channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::SfuMetrics;
use super::engine::{Command, Engine, EngineConfig};

/// Commands waiting for the engine; senders wait (async) when it is full.
pub const COMMAND_QUEUE: usize = 256;

pub fn spawn(
    socket: std::net::UdpSocket,
    cfg: EngineConfig,
    metrics: Arc<SfuMetrics>,
    shutdown: CancellationToken,
) -> std::io::Result<(mpsc::Sender<Command>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    socket.set_nonblocking(true)?;
    let handle = std::thread::Builder::new().name("sfu".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return error!(error = %e, "cannot start the SFU runtime"),
        };
        rt.block_on(async move {
            let socket = match UdpSocket::from_std(socket) {
                Ok(s) => s,
                Err(e) => return error!(error = %e, "cannot register the SFU socket"),
            };
            run(socket, cfg, metrics, rx, shutdown).await;
        });
    })?;
    Ok((tx, handle))
}

async fn run(
    socket: UdpSocket,
    cfg: EngineConfig,
    metrics: Arc<SfuMetrics>,
    mut rx: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let local: Option<SocketAddr> = socket.local_addr().ok();
    info!(addr = ?local, announce = ?cfg.announce, "SFU media port ready");
    let mut engine = Engine::new(cfg, metrics.clone(), Instant::now());
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(t) = engine.poll_transmit() {
            match socket.try_send_to(&t.data, t.to) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Kernel buffer full: waiting here would delay every
                    // other participant, so the packet is dropped like a
                    // congested router would (NACK/RTX repairs it).
                    metrics
                        .udp_send_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => debug!(to = %t.to, error = %e, "send failed"),
            }
        }
        let deadline = engine.poll_timeout();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let now = Instant::now();
                    engine.handle_datagram(now, from, &buf[..n]);
                    // Drain whatever else is already queued before timers.
                    for _ in 0..64 {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => engine.handle_datagram(Instant::now(), from, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
                // ICMP port unreachable from a vanished browser shows up as
                // an error on the next recv; it is not ours to act on.
                Err(e) => debug!(error = %e, "recv error"),
            },
            cmd = rx.recv() => match cmd {
                Some(c) => engine.handle_command(Instant::now(), c),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                engine.handle_timeout(Instant::now());
            }
        }
    }
    info!("SFU stopped");
}
