//! How much of what the gateway handed the HTTP server for a client has left the process:
//! the client's side of the stream pump's backpressure.
//!
//! Why this exists: Granian's RSGI stream transport accepts every chunk at once (its
//! `send_bytes` pushes into an unbounded channel; its ASGI transport got a bounded one in
//! Granian #898, RSGI did not), so a client that reads slowly makes the worker hold everything
//! the provider sends. The kernel knows what left: for the client's TCP socket, the bytes the
//! application has written are `tcpi_bytes_acked` (acknowledged by the client) plus `SIOCOUTQ`
//! (still in the send queue). Anything handed to the server and not yet written is in the
//! worker's memory.
//!
//! The socket is found among this process's descriptors by its addresses (the RSGI scope gives
//! the client's address and the listener's port), once per connection (a scan of
//! `/proc/self/fd`, then cached); every later use checks the descriptor still is that socket.
//! Linux only: elsewhere [`ClientSocket::find`] finds nothing, and the caller goes without.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

type Fd = i32;

/// A client's TCP socket in this process.
#[derive(Debug, Clone, Copy)]
pub struct ClientSocket {
    fd: Fd,
    local_port: u16,
    peer: SocketAddr,
}

fn cache() -> &'static Mutex<HashMap<(u16, SocketAddr), Fd>> {
    static CACHE: OnceLock<Mutex<HashMap<(u16, SocketAddr), Fd>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

impl ClientSocket {
    /// The socket connected from `peer` to this process's `local_port`, if there is one.
    pub fn find(local_port: u16, peer: SocketAddr) -> Option<ClientSocket> {
        let key = (local_port, peer);
        let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&fd) = cache.get(&key) {
            if sys::matches(fd, local_port, peer) {
                return Some(ClientSocket {
                    fd,
                    local_port,
                    peer,
                });
            }
        }
        // One scan indexes every TCP socket of the process: the connections that arrived since
        // the last scan are all found by it.
        cache.clear();
        for fd in sys::descriptors() {
            if let Some((port, from)) = sys::addresses(fd) {
                cache.insert((port, from), fd);
            }
        }
        cache.get(&key).map(|&fd| ClientSocket {
            fd,
            local_port,
            peer,
        })
    }

    /// Whether the client behind `peer` has certainly left: on Linux, its socket is no longer in
    /// this process (the server closed it) or the client has closed its side. `false` where
    /// that cannot be known.
    pub fn gone(local_port: u16, peer: SocketAddr) -> bool {
        if !cfg!(target_os = "linux") {
            return false;
        }
        match ClientSocket::find(local_port, peer) {
            None => true,
            Some(socket) => !sys::established(socket.fd),
        }
    }

    /// `(written, queued)`: the bytes the application has written to this socket since it was
    /// opened, and how many of those are still in its send queue (not acknowledged by the
    /// client); `None` when the descriptor is no longer this connection (it closed).
    pub fn state(&self) -> Option<(u64, u64)> {
        if !sys::matches(self.fd, self.local_port, self.peer) {
            return None;
        }
        sys::state(self.fd)
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use std::mem::{size_of, MaybeUninit};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

    use super::Fd;

    /// The start of the kernel's `struct tcp_info` (include/uapi/linux/tcp.h), up to the fields
    /// read here; the kernel copies at most the length it is given.
    #[repr(C)]
    #[derive(Default)]
    struct TcpInfo {
        bytes8: [u8; 8],
        rto_to_total_retrans: [u32; 24],
        pacing_rate: u64,
        max_pacing_rate: u64,
        bytes_acked: u64,
    }

    pub fn descriptors() -> Vec<Fd> {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// The local port and peer address of a connected TCP socket.
    pub fn addresses(fd: Fd) -> Option<(u16, SocketAddr)> {
        let peer = address(fd, true)?;
        let local = address(fd, false)?;
        Some((local.port(), peer))
    }

    pub fn matches(fd: Fd, local_port: u16, peer: SocketAddr) -> bool {
        addresses(fd) == Some((local_port, normalize(peer)))
    }

    fn normalize(addr: SocketAddr) -> SocketAddr {
        match addr {
            // A v4 client of a dual-stack listener is seen as `::ffff:a.b.c.d`.
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
                None => addr,
            },
            SocketAddr::V4(_) => addr,
        }
    }

    fn address(fd: Fd, peer: bool) -> Option<SocketAddr> {
        let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `storage` is a writable sockaddr_storage of `len` bytes; the kernel writes at
        // most `len` bytes and reports how many. A descriptor that is not a socket fails with
        // ENOTSOCK and nothing is read.
        let rc = unsafe {
            if peer {
                libc::getpeername(fd, storage.as_mut_ptr().cast(), &mut len)
            } else {
                libc::getsockname(fd, storage.as_mut_ptr().cast(), &mut len)
            }
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: the call succeeded, so the kernel initialised the address it reported.
        let storage = unsafe { storage.assume_init() };
        match i32::from(storage.ss_family) {
            libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says this is a sockaddr_in, which fits in the storage.
                let sin: libc::sockaddr_in =
                    unsafe { std::ptr::read(std::ptr::addr_of!(storage).cast()) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the family says this is a sockaddr_in6, which fits in the storage.
                let sin6: libc::sockaddr_in6 =
                    unsafe { std::ptr::read(std::ptr::addr_of!(storage).cast()) };
                let addr = SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                ));
                Some(normalize(addr))
            }
            _ => None,
        }
    }

    /// The connection is in TCP's ESTABLISHED state (the peer has not closed its side).
    pub fn established(fd: Fd) -> bool {
        const TCP_ESTABLISHED: u8 = 1;
        tcp_info(fd).is_some_and(|info| info.bytes8[0] == TCP_ESTABLISHED)
    }

    pub fn state(fd: Fd) -> Option<(u64, u64)> {
        let info = tcp_info(fd)?;
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int, the bytes in the socket's send queue.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, std::ptr::addr_of_mut!(queued)) };
        if rc != 0 {
            return None;
        }
        let queued = u64::try_from(queued).unwrap_or(0);
        Some((info.bytes_acked + queued, queued))
    }

    fn tcp_info(fd: Fd) -> Option<TcpInfo> {
        let mut info = TcpInfo::default();
        let mut len = size_of::<TcpInfo>() as libc::socklen_t;
        // SAFETY: `info` is a writable, plain-old-data buffer of `len` bytes; the kernel writes
        // at most `len` bytes of its tcp_info and sets `len` to what it wrote.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                std::ptr::addr_of_mut!(info).cast(),
                &mut len,
            )
        };
        // Not TCP, or a kernel older than 4.1 (no `bytes_acked`).
        (rc == 0 && len as usize >= size_of::<TcpInfo>()).then_some(info)
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::net::SocketAddr;

    use super::Fd;

    pub fn descriptors() -> Vec<Fd> {
        Vec::new()
    }

    pub fn addresses(_fd: Fd) -> Option<(u16, SocketAddr)> {
        None
    }

    pub fn matches(_fd: Fd, _local_port: u16, _peer: SocketAddr) -> bool {
        false
    }

    pub fn established(_fd: Fd) -> bool {
        true
    }

    pub fn state(_fd: Fd) -> Option<(u64, u64)> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_the_accepted_socket_and_counts_what_left() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut accepted, peer) = listener.accept().unwrap();
        let socket = ClientSocket::find(port, peer).expect("the accepted socket is found");
        let (before, _) = socket.state().unwrap();
        accepted.write_all(&[7u8; 100_000]).unwrap();
        let (after, _) = socket.state().unwrap();
        assert_eq!(after - before, 100_000);
        let mut buf = vec![0; 100_000];
        client.read_exact(&mut buf).unwrap();
        assert!(!ClientSocket::gone(port, peer));
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !ClientSocket::gone(port, peer) {
            assert!(
                std::time::Instant::now() < deadline,
                "a client that closed is seen gone"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(accepted);
        assert!(
            socket.state().is_none(),
            "a closed descriptor is not taken for the connection"
        );
        assert!(ClientSocket::find(port, "127.0.0.1:1".parse().unwrap()).is_none());
    }
}
