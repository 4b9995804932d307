//! Zero-copy, checked views of packets and application protocols. Nothing
//! here allocates on the common path or panics on any input: malformed
//! input is a `None`, a [`packet::Drop`] reason or a capture error.

pub mod apps;
pub(crate) mod bytes;
pub mod capture;
pub mod dns;
pub mod encap;
pub mod http;
pub mod packet;
pub mod quic;
pub mod raknet;
pub mod rtc;
pub mod sip;
pub mod socks;
pub mod tls;
pub mod tunnel;
pub mod utp;
