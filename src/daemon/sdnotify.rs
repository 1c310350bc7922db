//! sd_notify(3) spoken directly: datagrams to `$NOTIFY_SOCKET` (a path or an abstract name).
//! Outside systemd there is no socket and every call is a no-op.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    sock: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let sock = std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|p| Self::connect(&p));
        // WATCHDOG_PID, when set, must be us; otherwise the watchdog is someone else's.
        let ours = std::env::var("WATCHDOG_PID")
            .map(|p| p == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(Duration::from_micros);
        Notifier { sock, watchdog }
    }

    /// A datagram socket for `$NOTIFY_SOCKET`'s value: a path, or `@name` (abstract).
    fn connect(p: &str) -> Option<(UnixDatagram, SocketAddr)> {
        let addr = match p.strip_prefix('@') {
            Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()).ok()?,
            None => SocketAddr::from_pathname(p).ok()?,
        };
        let sock = UnixDatagram::unbound().ok()?;
        // Never block the agent on its supervisor: a full queue drops a message instead.
        sock.set_nonblocking(true).ok()?;
        Some((sock, addr))
    }

    /// Sends `msg` (newline-separated `KEY=VALUE` lines) without blocking; errors (a full
    /// queue included) are logged, never fatal.
    pub fn send(&self, msg: &str) {
        if let Some((s, addr)) = &self.sock {
            if let Err(e) = s.send_to_addr(msg.as_bytes(), addr) {
                log::debug!("sd_notify failed: {e}");
            }
        }
    }

    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={text}"));
    }

    /// How often to send WATCHDOG=1 (half the configured timeout), if systemd asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sending_never_blocks_when_nobody_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            sock: Notifier::connect(path.to_str().unwrap()),
            watchdog: None,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..1000 {
                n.status(&format!("message {i}"));
            }
            let _ = tx.send(());
        });
        // The receive queue holds a few datagrams; the rest must be dropped, not waited on.
        assert!(
            rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "sd_notify blocked the agent"
        );
        let mut buf = [0u8; 64];
        let got = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"STATUS=message 0");
    }
}
