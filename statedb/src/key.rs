//! Index keys: how values become the byte strings that sled orders.
//!
//! Integers are big-endian so byte order is numeric order; strings are their
//! UTF-8 bytes; tuples join escaped components with a terminator, so a
//! one-element tuple `(a,)` is a prefix of every `(a, _)` key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A value usable as an index key or key prefix.
pub trait ToKey {
    /// The key bytes. Equal values give equal bytes; the byte order of keys
    /// is the order rows are listed in.
    fn to_key(&self) -> Vec<u8>;
}

impl<T: ToKey + ?Sized> ToKey for &T {
    fn to_key(&self) -> Vec<u8> {
        (**self).to_key()
    }
}

impl ToKey for str {
    fn to_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl ToKey for String {
    fn to_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl ToKey for [u8] {
    fn to_key(&self) -> Vec<u8> {
        self.to_vec()
    }
}

impl ToKey for Vec<u8> {
    fn to_key(&self) -> Vec<u8> {
        self.clone()
    }
}

impl ToKey for bool {
    fn to_key(&self) -> Vec<u8> {
        vec![u8::from(*self)]
    }
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl ToKey for $t {
            fn to_key(&self) -> Vec<u8> {
                self.to_be_bytes().to_vec()
            }
        }
    )*};
}
int_key!(u8, u16, u32, u64, u128);

impl ToKey for Ipv4Addr {
    fn to_key(&self) -> Vec<u8> {
        self.octets().to_vec()
    }
}

impl ToKey for Ipv6Addr {
    fn to_key(&self) -> Vec<u8> {
        self.octets().to_vec()
    }
}

/// IPv4 sorts before IPv6: a family byte (4 or 6), then the octets.
impl ToKey for IpAddr {
    fn to_key(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        match self {
            IpAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&v6.octets());
            }
        }
        out
    }
}

impl<A: ToKey> ToKey for (A,) {
    fn to_key(&self) -> Vec<u8> {
        let mut out = escape(&self.0.to_key());
        out.extend_from_slice(&TERMINATOR);
        out
    }
}

impl<A: ToKey, B: ToKey> ToKey for (A, B) {
    fn to_key(&self) -> Vec<u8> {
        let mut out = (&self.0,).to_key();
        out.extend_from_slice(&escape(&self.1.to_key()));
        out
    }
}

impl<A: ToKey, B: ToKey, C: ToKey> ToKey for (A, B, C) {
    fn to_key(&self) -> Vec<u8> {
        let mut out = (&self.0,).to_key();
        out.extend_from_slice(&(&self.1,).to_key());
        out.extend_from_slice(&escape(&self.2.to_key()));
        out
    }
}

/// Ends an escaped component; never occurs inside one.
pub(crate) const TERMINATOR: [u8; 2] = [0, 0];

/// Escapes 0x00 as 0x00 0xFF, so [`TERMINATOR`] cannot occur inside and the
/// escaped form keeps both the order and the prefix relation of the input.
pub(crate) fn escape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 2);
    for &b in raw {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out
}

/// The smallest byte string greater than every string starting with
/// `prefix`, or `None` when there is none (empty or all-0xFF prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_order_numerically() {
        assert!(2u32.to_key() < 256u32.to_key());
        assert!(1u64.to_key() < u64::MAX.to_key());
    }

    #[test]
    fn ipv4_sorts_before_ipv6() {
        let v4: IpAddr = "255.255.255.255".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        assert!(v4.to_key() < v6.to_key());
    }

    #[test]
    fn tuple_prefix_matches_only_its_first_component() {
        let a = ("ab", "x").to_key();
        let b = ("abc", "x").to_key();
        let p = ("ab",).to_key();
        assert!(a.starts_with(&p));
        assert!(!b.starts_with(&p));
    }

    #[test]
    fn escaping_keeps_order_and_hides_terminator() {
        let a = escape(&[1, 0, 2]);
        let b = escape(&[1, 0, 0]);
        assert!(b < a);
        assert!(!a.windows(2).any(|w| w == TERMINATOR));
        assert!(!b.windows(2).any(|w| w == TERMINATOR));
    }

    #[test]
    fn prefix_end_skips_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
        assert_eq!(prefix_end(&[]), None);
    }
}
