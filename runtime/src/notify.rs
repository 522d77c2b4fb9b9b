//! The service manager's readiness protocol (`sd_notify`), for `Type=notify` units: every Strait
//! binary says `READY=1` once it serves, `STOPPING=1` when it starts to drain, and pings the
//! watchdog when the unit enables one.
//!
//! In: `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) and `$WATCHDOG_USEC` /
//! `$WATCHDOG_PID`, set by systemd. Out: datagrams to that socket. Without `$NOTIFY_SOCKET`
//! (not under systemd) every call does nothing; a message that cannot be sent is logged, never
//! fatal.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where to tell the service manager how the process is doing.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

/// The address `$NOTIFY_SOCKET` names.
fn address(value: &str) -> std::io::Result<SocketAddr> {
    match value.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(value),
    }
}

impl Notifier {
    /// The notifier the environment asks for (none outside systemd).
    pub fn from_env() -> Notifier {
        let Some(socket) = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty()) else { return Notifier::default() };
        let mut notifier = match (address(&socket), UnixDatagram::unbound()) {
            (Ok(address), Ok(datagram)) => Notifier { target: Some((datagram, address)), watchdog: None },
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(socket, %error, "cannot use NOTIFY_SOCKET; systemd will not hear of readiness");
                return Notifier::default();
            }
        };
        let for_us = std::env::var("WATCHDOG_PID").ok().is_none_or(|pid| pid.trim() == std::process::id().to_string());
        let usec = std::env::var("WATCHDOG_USEC").ok().and_then(|u| u.trim().parse::<u64>().ok()).filter(|u| *u > 0);
        notifier.watchdog = usec.filter(|_| for_us).map(Duration::from_micros);
        notifier
    }

    /// A notifier for the socket at `path` (tests).
    pub fn to_path(path: &std::path::Path) -> std::io::Result<Notifier> {
        Ok(Notifier { target: Some((UnixDatagram::unbound()?, SocketAddr::from_pathname(path)?)), watchdog: None })
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    fn send(&self, message: &str) {
        let Some((datagram, address)) = &self.target else { return };
        if let Err(error) = datagram.send_to_addr(message.as_bytes(), address) {
            tracing::warn!(message, %error, "cannot notify the service manager");
        }
    }

    /// The process serves: `systemctl start` returns, and units ordered after it start.
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=serving");
    }

    /// The process drains and will exit.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    /// Pings the watchdog at half its interval, from the runtime: a process whose runtime
    /// stops turning is restarted by systemd. Nothing without a watchdog.
    pub fn spawn_watchdog(self: &std::sync::Arc<Self>) {
        let Some(interval) = self.watchdog else { return };
        let notifier = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                notifier.send("WATCHDOG=1");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_and_nothing_is_sent_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let notifier = Notifier::to_path(&path).unwrap();
        assert!(notifier.is_enabled());
        notifier.ready();
        notifier.stopping();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining");
        let silent = Notifier::default();
        assert!(!silent.is_enabled());
        silent.ready();
        assert!(address("@strait-test").is_ok() && address("/run/systemd/notify").is_ok());
    }
}
