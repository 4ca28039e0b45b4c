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

/// Datagrams handed to the kernel per `sendmmsg` call: one published packet
/// fans out to every subscriber, so copies come in bursts.
const BATCH: usize = 64;

/// Sends everything the engine produced. A full kernel buffer drops the rest
/// of the burst, as a congested router would (NACK/RTX repairs it): waiting
/// here would delay every other participant.
fn flush(socket: &UdpSocket, engine: &mut Engine, batch: &mut Vec<super::engine::Transmit>, metrics: &SfuMetrics) {
    loop {
        batch.clear();
        while batch.len() < BATCH {
            match engine.poll_transmit() {
                Some(t) => batch.push(t),
                None => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        let sent = send_batch(socket, batch);
        if sent < batch.len() {
            metrics
                .udp_send_dropped
                .fetch_add((batch.len() - sent) as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// One `sendmmsg` for the whole burst: the per-datagram system call, not the
/// forwarding decision, is the larger cost of a copy (see benches/sfu_forward.rs).
#[cfg(target_os = "linux")]
pub fn send_batch(socket: &UdpSocket, batch: &[super::engine::Transmit]) -> usize {
    use std::os::fd::AsRawFd;
    let addrs: Vec<socket2::SockAddr> = batch.iter().map(|t| socket2::SockAddr::from(t.to)).collect();
    let mut iovs: Vec<libc::iovec> = batch
        .iter()
        .map(|t| libc::iovec {
            iov_base: t.data.as_ptr() as *mut libc::c_void,
            iov_len: t.data.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(batch.len());
    for (i, a) in addrs.iter().enumerate() {
        // SAFETY: an all-zero msghdr is a valid "no control data" header.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = a.as_ptr() as *mut libc::c_void;
        h.msg_namelen = a.len();
        h.msg_iov = &mut iovs[i] as *mut libc::iovec;
        h.msg_iovlen = 1;
        msgs.push(libc::mmsghdr { msg_hdr: h, msg_len: 0 });
    }
    let mut done = 0usize;
    while done < msgs.len() {
        // SAFETY: every pointer in msgs[done..] points into addrs/iovs/batch,
        // which outlive this call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs[done..].as_mut_ptr(),
                (msgs.len() - done) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => return done,
                // An unreachable destination (ICMP from a vanished
                // browser) fails only its own datagram: skip it.
                _ => {
                    debug!(to = %batch[done].to, error = %e, "send failed");
                    done += 1;
                    continue;
                }
            }
        }
        done += n as usize;
    }
    done
}

#[cfg(not(target_os = "linux"))]
pub fn send_batch(socket: &UdpSocket, batch: &[super::engine::Transmit]) -> usize {
    let mut sent = 0;
    for t in batch {
        match socket.try_send_to(&t.data, t.to) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return sent,
            Err(e) => debug!(to = %t.to, error = %e, "send failed"),
        }
    }
    sent
}

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
    let mut batch: Vec<super::engine::Transmit> = Vec::with_capacity(BATCH);
    loop {
        flush(&socket, &mut engine, &mut batch, &metrics);
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
