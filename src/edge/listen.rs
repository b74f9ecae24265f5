//! Listening sockets with a deep accept queue. `tokio::net::TcpListener::bind` asks for a
//! backlog of 128: a burst of new connections (a tool reconnecting its whole pool after
//! a deploy, a load balancer's health checks and traffic at once) beyond what the accept
//! loop takes in one go was refused or dropped by the kernel (SYN retried after 1 s).

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// The accept queue asked for. The kernel caps it at `net.core.somaxconn` (4096 on
/// Linux since 5.4; raise that sysctl if it is lower).
pub const BACKLOG: u32 = 1024;

/// Binds `addr` with [`BACKLOG`], address reuse on (as tokio's own `bind`: a restart
/// does not wait for the old connections' TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue the kernel reports for a listening socket (`ss` shows it as Send-Q).
    fn backlog_of(port: u16) -> Option<u32> {
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace().nth(2)?.parse().ok()
    }

    #[tokio::test]
    async fn listeners_ask_for_a_deep_accept_queue() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        let Some(queue) = backlog_of(port) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "`ss` (iproute2) is needed to read the accept queue in CI"
            );
            eprintln!("skipped: `ss` is not available to read the accept queue");
            return;
        };
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(BACKLOG);
        assert_eq!(queue, BACKLOG.min(somaxconn));
        // And it accepts.
        let client = tokio::net::TcpStream::connect(("127.0.0.1", port));
        let (accepted, connected) = tokio::join!(l.accept(), client);
        accepted.unwrap();
        connected.unwrap();
    }
}
