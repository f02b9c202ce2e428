//! Descriptors handed from one process to another over a Unix socket (`SCM_RIGHTS`): how a
//! walled process, which can make no socket of its own, is given a channel already connected to
//! the one peer it may reach. A message is a datagram of a sequenced-packet pair (its bounds
//! kept, never merged with the next) with at most one descriptor beside it.

use std::io::{Error, ErrorKind, Result};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// What a socket pair carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pair {
    /// Whole messages with descriptors beside them (a broker's socket).
    Messages,
    /// A byte stream (a channel: HTTP/2 runs on it).
    Stream,
}

/// A connected pair of Unix sockets, close-on-exec (a descriptor meant for a child is moved to
/// its place, which clears the flag there).
pub fn pair(kind: Pair) -> Result<(OwnedFd, OwnedFd)> {
    let ty = match kind {
        Pair::Messages => libc::SOCK_SEQPACKET,
        Pair::Stream => libc::SOCK_STREAM,
    };
    let mut fds = [0 as RawFd; 2];
    // SAFETY: writes two descriptors into the local array.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: both are new descriptors this process owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The socket of `kind` (`libc::SOCK_SEQPACKET`, ...) a parent handed this process at `fd`,
/// once it is sure to be one; `what` names it in the error.
pub fn handed(fd: RawFd, kind: libc::c_int, what: &str) -> Result<OwnedFd> {
    let mut found: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: asks the descriptor's socket type into a local.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&mut found as *mut libc::c_int).cast(), &mut len)
    };
    if rc != 0 || found != kind {
        return Err(Error::other(format!("{what}: descriptor {fd} is none (the server hands it in)")));
    }
    // SAFETY: the descriptor is a socket this process owns from now on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Between fork and exec: puts `fd` at `target`, open across exec (dup2 onto itself would
/// leave close-on-exec set, so that is cleared instead). Async-signal-safe; negative on failure.
pub fn place(fd: RawFd, target: RawFd) -> libc::c_int {
    // SAFETY: fcntl and dup2 on descriptors the caller holds; both async-signal-safe.
    unsafe {
        match fd {
            f if f < 0 => -1,
            f if f == target => libc::fcntl(target, libc::F_SETFD, 0),
            f => libc::dup2(f, target),
        }
    }
}

/// Makes `fd` non-blocking (for an event loop's readiness).
pub fn set_nonblocking(fd: BorrowedFd) -> Result<()> {
    // SAFETY: reads and sets the flags of a descriptor the caller holds.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(Error::last_os_error());
        }
    }
    Ok(())
}

const SPACE: usize = 64;

/// Sends `message` on `socket`, with `fd` beside it. A full socket answers `WouldBlock` when it
/// is non-blocking.
pub fn send(socket: BorrowedFd, message: &[u8], fd: Option<BorrowedFd>) -> Result<()> {
    let mut iov = libc::iovec { iov_base: message.as_ptr() as *mut libc::c_void, iov_len: message.len() };
    let mut control = [0u8; SPACE];
    // SAFETY: a zeroed msghdr is a valid empty one; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: the control buffer holds one header and one descriptor (CMSG_SPACE of an int
        // is far below SPACE); the macros only compute offsets into it.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    loop {
        // SAFETY: sends what `msg` points at, all of it alive here.
        let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(());
        }
        let e = Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message into `buf`: its length (0 when the peer has closed) and the descriptor
/// beside it, if any. A message longer than `buf`, or more than one descriptor, is refused (the
/// extra descriptors closed), so a peer cannot slip in what the receiver did not ask for.
pub fn recv(socket: BorrowedFd, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u8; SPACE];
    // SAFETY: as in `send`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = SPACE as _;
    let n = loop {
        // SAFETY: receives into the local buffers `msg` points at; descriptors arrive
        // close-on-exec.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walks the control messages the kernel wrote into `control`, within its length.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                let count = ((*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(Error::new(ErrorKind::InvalidData, "a message past its bound"));
    }
    if fds.len() > 1 {
        return Err(Error::new(ErrorKind::InvalidData, "more than one descriptor in a message"));
    }
    Ok((n, fds.pop()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_stream_handed_over_reaches_its_peer_and_nothing_else_rides_along() {
        let (broker_a, broker_b) = pair(Pair::Messages).unwrap();
        let (mine, theirs) = pair(Pair::Stream).unwrap();
        send(broker_a.as_fd(), b"{\"channel\":\"x\"}", Some(theirs.as_fd())).unwrap();
        drop(theirs);
        let mut buf = [0u8; 64];
        let (n, fd) = recv(broker_b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"{\"channel\":\"x\"}");
        let mut got = std::os::unix::net::UnixStream::from(fd.expect("a descriptor"));
        let mut mine = std::os::unix::net::UnixStream::from(mine);
        mine.write_all(b"ping").unwrap();
        let mut four = [0u8; 4];
        got.read_exact(&mut four).unwrap();
        assert_eq!(&four, b"ping");

        // A message without one, one too long, and the peer gone.
        send(broker_a.as_fd(), b"plain", None).unwrap();
        assert!(recv(broker_b.as_fd(), &mut buf).unwrap().1.is_none());
        send(broker_a.as_fd(), &[7u8; 100], None).unwrap();
        assert_eq!(recv(broker_b.as_fd(), &mut buf).unwrap_err().kind(), ErrorKind::InvalidData);
        drop(broker_a);
        assert_eq!(recv(broker_b.as_fd(), &mut buf).unwrap().0, 0);
    }
}
