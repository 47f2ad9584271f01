//! The client's IP address from the text Envoy gives for `source.address`:
//! `192.0.2.7:51234` for IPv4, `[2001:db8::1]:443` for IPv6 (an address
//! without a port is taken too); anything else (a Unix socket path) is no
//! IP.
//!
//! Each worker thread remembers the last text it parsed: requests that
//! follow one another on a worker mostly come from one connection (an
//! HTTP/2 client sends many at once), which gives the same text, and
//! parsing it costs more than the rest of a usage record (callgrind: about
//! 560 instructions a request, where comparing the text costs a few dozen).
//! Clients' requests interleaved on one worker are parsed each time, as
//! before.

use std::{
    cell::RefCell,
    net::{IpAddr, SocketAddr},
};

/// Longest text remembered; a longer one (no address Envoy writes is) is
/// parsed every time.
const REMEMBERED: usize = 64;

thread_local! {
    static LAST: RefCell<LastParsed> = const { RefCell::new(LastParsed::EMPTY) };
}

/// The client's IP address in `text`; `None` when it is not an address.
pub fn client_ip(text: &str) -> Option<IpAddr> {
    if text.len() > REMEMBERED {
        return parse(text);
    }
    LAST.with_borrow_mut(|last| last.ip_of(text))
}

/// The last text parsed on this thread, and what it held.
struct LastParsed {
    text: [u8; REMEMBERED],
    len: usize,
    ip: Option<IpAddr>,
}

impl LastParsed {
    /// Nothing parsed yet: the empty text, which holds no address.
    const EMPTY: Self = Self {
        text: [0; REMEMBERED],
        len: 0,
        ip: None,
    };

    /// `text` is at most [`REMEMBERED`] bytes.
    fn ip_of(&mut self, text: &str) -> Option<IpAddr> {
        if &self.text[..self.len] != text.as_bytes() {
            self.ip = parse(text);
            self.text[..text.len()].copy_from_slice(text.as_bytes());
            self.len = text.len();
        }
        self.ip
    }
}

fn parse(text: &str) -> Option<IpAddr> {
    text.parse::<SocketAddr>()
        .map(|socket| socket.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_text_gives_its_own_address_whatever_was_parsed_before() {
        let texts = [
            ("192.0.2.7:51234", Some("192.0.2.7")),
            ("192.0.2.7:51234", Some("192.0.2.7")),
            // As long as the text before.
            ("192.0.2.8:51234", Some("192.0.2.8")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("[2001:db8::2]:443", Some("2001:db8::2")),
            ("192.0.2.8:51234", Some("192.0.2.8")),
            ("", None),
            ("192.0.2.8", Some("192.0.2.8")),
            ("not an address", None),
            ("192.0.2.7:51234", Some("192.0.2.7")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
        ];
        for (text, want) in texts {
            let want = want.map(|ip| ip.parse::<IpAddr>().unwrap());
            assert_eq!(client_ip(text), want, "{text:?}");
        }
    }

    #[test]
    fn a_text_longer_than_remembered_is_parsed_and_does_not_replace_the_last() {
        assert_eq!(client_ip("203.0.113.1:80"), "203.0.113.1".parse().ok());
        let long = format!("{}:80", "0".repeat(REMEMBERED));
        assert_eq!(client_ip(&long), None);
        assert_eq!(client_ip("203.0.113.1:80"), "203.0.113.1".parse().ok());
        LAST.with_borrow(|last| assert_eq!(&last.text[..last.len], b"203.0.113.1:80"));
    }
}
