//! Just enough RFC 6455 framing for the floor peer: read one masked client frame in place
//! (unmasking it where it lies, so nothing is copied), and append an unmasked server frame
//! to a buffer. No UTF-8 validation, no fragmented messages, no extensions: the load tool
//! sends none of those, and every check left out is work the floor does not pay for.

/// Opcodes the peer acts on.
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Close codes the peer sends when it gives up on a client.
pub const PROTOCOL_ERROR: u16 = 1002;
pub const UNSUPPORTED: u16 = 1003;
pub const TOO_BIG: u16 = 1009;

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// Not a whole frame yet: keep the bytes and read more.
    Incomplete,
    /// A whole frame: its opcode, where its (now unmasked) payload lies in the buffer,
    /// and how many bytes it took in all.
    Frame { opcode: u8, payload: std::ops::Range<usize>, len: usize },
    /// The client broke the protocol or sent something unsupported: close with this code.
    Fail(u16),
}

/// Parses the frame at the start of `buf`, unmasking its payload in place. Frames
/// larger than `max_payload` are refused rather than buffered.
pub fn parse(buf: &mut [u8], max_payload: usize) -> Parsed {
    if buf.len() < 2 {
        return Parsed::Incomplete;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let (fin, rsv, opcode) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0F);
    if rsv != 0 || b1 & 0x80 == 0 {
        return Parsed::Fail(PROTOCOL_ERROR); // extensions were not negotiated; clients must mask
    }
    let (len, mut at) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
        126 | 127 => return Parsed::Incomplete,
        n => (u64::from(n), 2),
    };
    let control = opcode & 0x08 != 0;
    if control && (!fin || len > 125) {
        return Parsed::Fail(PROTOCOL_ERROR);
    }
    if !control && (!fin || opcode == 0) {
        return Parsed::Fail(UNSUPPORTED); // fragmented messages: the loads never send them
    }
    if len > max_payload as u64 {
        return Parsed::Fail(TOO_BIG);
    }
    let len = len as usize;
    if buf.len() < at + 4 + len {
        return Parsed::Incomplete;
    }
    let mask: [u8; 4] = buf[at..at + 4].try_into().expect("4 bytes");
    at += 4;
    unmask(&mut buf[at..at + len], mask);
    Parsed::Frame { opcode, payload: at..at + len, len: at + len }
}

/// XORs the payload with the client's mask, eight bytes at a time where it can.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the mask lines up again at index 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends one final, unmasked server frame (servers never mask) to `out`.
pub fn push(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.reserve(10 + payload.len());
    out.push(0x80 | opcode);
    match payload.len() {
        n if n <= 125 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A close frame with `code`.
pub fn push_close(out: &mut Vec<u8>, code: u16) {
    push(out, CLOSE, &code.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n <= 125 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn unmasks_frames_of_every_length_form() {
        for size in [0, 5, 125, 126, 1000, 70_000] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let mut buf = masked(TEXT, true, &payload, [1, 2, 3, 250]);
            let total = buf.len();
            buf.extend_from_slice(b"next");
            // Every strict prefix is incomplete.
            for cut in [1, 3, total - 1] {
                assert_eq!(parse(&mut buf.clone()[..cut], 1 << 20), Parsed::Incomplete, "size {size} cut {cut}");
            }
            match parse(&mut buf, 1 << 20) {
                Parsed::Frame { opcode, payload: range, len } => {
                    assert_eq!((opcode, len), (TEXT, total));
                    assert_eq!(&buf[range], &payload[..]);
                }
                other => panic!("size {size}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_what_it_does_not_handle() {
        assert_eq!(parse(&mut masked(TEXT, false, b"part", [0; 4]), 100), Parsed::Fail(UNSUPPORTED));
        assert_eq!(parse(&mut masked(PING, true, &[0; 126], [0; 4]), 1000), Parsed::Fail(PROTOCOL_ERROR));
        assert_eq!(parse(&mut masked(TEXT, true, &[0; 101], [0; 4]), 100), Parsed::Fail(TOO_BIG));
        let mut unmasked = vec![0x81, 1, b'x'];
        assert_eq!(parse(&mut unmasked, 100), Parsed::Fail(PROTOCOL_ERROR));
    }

    #[test]
    fn server_frames_have_the_right_header() {
        let mut out = Vec::new();
        push(&mut out, TEXT, b"hi");
        assert_eq!(out, b"\x81\x02hi");
        out.clear();
        push(&mut out, BINARY, &[0; 300]);
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
        out.clear();
        push_close(&mut out, 1000);
        assert_eq!(out, [0x88, 2, 0x03, 0xE8]);
    }
}
