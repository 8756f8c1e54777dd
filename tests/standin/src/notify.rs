//! systemd's readiness protocol (sd_notify): the rendered units are
//! `Type=notify`, so a service tells systemd it is up by sending `READY=1`
//! as a datagram to the unix socket named by `$NOTIFY_SOCKET` (a leading
//! '@' means a socket in the abstract namespace).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Sends `state` to `$NOTIFY_SOCKET`; Ok(false) when it is not set.
pub fn notify(state: &str) -> Result<bool, String> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) if !path.is_empty() => send(&path, state).map(|()| true),
        _ => Ok(false),
    }
}

fn send(socket: &OsStr, state: &str) -> Result<(), String> {
    let what = format!("NOTIFY_SOCKET={}", socket.to_string_lossy());
    let sock = UnixDatagram::unbound().map_err(|e| format!("{what}: {e}"))?;
    let bytes = socket.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)
            .map_err(|e| format!("{what}: {e}"))?;
        sock.send_to_addr(state.as_bytes(), &addr)
            .map_err(|e| format!("{what}: {e}"))?;
    } else {
        sock.send_to(state.as_bytes(), socket)
            .map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("kubeforge-standin-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn missing_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("none").as_os_str(), "READY=1").is_err());
    }
}
