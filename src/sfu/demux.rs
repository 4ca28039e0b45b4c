//! Classifying datagrams on the shared media port.
//!
//! Every participant's two peer connections share one UDP socket. A datagram
//! from an address we already know goes straight to its connection; from an
//! unknown address only a STUN binding request is acceptable, and its USERNAME
//! (`<our ufrag>:<their ufrag>`, RFC 8445 §7.2.2) names the connection. The
//! request is still authenticated by the ICE agent (MESSAGE-INTEGRITY with our
//! password), so a forged username cannot hijack a session: at worst it binds
//! an address that then never completes ICE.

/// RFC 7983 demultiplexing by first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketClass {
    Stun,
    Dtls,
    Rtp,
    Other,
}

pub fn classify(data: &[u8]) -> PacketClass {
    match data.first() {
        Some(0..=3) => PacketClass::Stun,
        Some(20..=63) => PacketClass::Dtls,
        Some(128..=191) => PacketClass::Rtp,
        _ => PacketClass::Other,
    }
}

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;

/// The local (our) ufrag from a STUN binding request's USERNAME, or None if
/// the datagram is not a well-formed binding request. Allocates nothing
/// (checked by the `stun` fuzz target).
pub fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    if data.len() < 20 || data[4..8] != MAGIC_COOKIE {
        return None;
    }
    let msg_type = u16::from_be_bytes([data[0], data[1]]);
    if msg_type != 0x0001 {
        return None;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    if !len.is_multiple_of(4) || 20 + len > data.len() {
        return None;
    }
    let mut at = 20;
    let end = 20 + len;
    while at + 4 <= end {
        let typ = u16::from_be_bytes([data[at], data[at + 1]]);
        let alen = u16::from_be_bytes([data[at + 2], data[at + 3]]) as usize;
        let vstart = at + 4;
        let vend = vstart.checked_add(alen)?;
        if vend > end {
            return None;
        }
        if typ == ATTR_USERNAME {
            let user = std::str::from_utf8(&data[vstart..vend]).ok()?;
            return user.split_once(':').map(|(local, _)| local).filter(|l| !l.is_empty());
        }
        at = vstart + alen.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, so the walk has to skip one.
        attrs.extend_from_slice(&0x0024u16.to_be_bytes());
        attrs.extend_from_slice(&4u16.to_be_bytes());
        attrs.extend_from_slice(&[1, 2, 3, 4]);
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn finds_local_ufrag() {
        let m = binding_request(b"serverUfrag:browser");
        assert_eq!(classify(&m), PacketClass::Stun);
        assert_eq!(stun_local_ufrag(&m), Some("serverUfrag"));
    }

    #[test]
    fn rejects_malformed_stun() {
        let good = binding_request(b"abc:def");
        // Truncated at every length: never panics, never yields a ufrag past the end.
        for n in 0..good.len() {
            let _ = stun_local_ufrag(&good[..n]);
        }
        let mut bad_cookie = good.clone();
        bad_cookie[5] ^= 1;
        assert_eq!(stun_local_ufrag(&bad_cookie), None);
        let mut response = good.clone();
        response[0] = 0x01;
        response[1] = 0x01;
        assert_eq!(stun_local_ufrag(&response), None);
        assert_eq!(stun_local_ufrag(&binding_request(b"nocolon")), None);
        assert_eq!(stun_local_ufrag(&binding_request(b":x")), None);
        let mut lying = good.clone();
        lying[3] = 0xfc; // length beyond the datagram
        assert_eq!(stun_local_ufrag(&lying), None);
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[22, 254, 253]), PacketClass::Dtls);
        assert_eq!(classify(&[0x80, 96]), PacketClass::Rtp);
        assert_eq!(classify(&[0xff]), PacketClass::Other);
        assert_eq!(classify(&[]), PacketClass::Other);
    }
}
