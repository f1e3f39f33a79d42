//! The client side of just enough WebSocket (RFC 6455) for a load tool: the upgrade
//! request and a check of the response, masked client frames of any size, and a reader
//! of server frames, [`MessageReader`], that hands on whole text messages and control
//! frames.

use crate::opts::WsUrl;

/// A small xorshift generator: keys and masks must vary, not be unpredictable, and this
/// avoids a dependency for a few random bytes per connection.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(extra: u64) -> Rng {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ extra.wrapping_mul(0x9E37);
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_be_bytes()
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The HTTP/1.1 upgrade request, with a fresh 16-byte key.
pub fn upgrade_request(url: &WsUrl, rng: &mut Rng) -> Vec<u8> {
    upgrade_request_to(url, &url.path, rng)
}

/// The upgrade request for `path` (path and query) on `url`'s host.
pub fn upgrade_request_to(url: &WsUrl, path: &str, rng: &mut Rng) -> Vec<u8> {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    key[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        path,
        url.host_header,
        base64(&key)
    )
    .into_bytes()
}

/// Largest response head we wait for before calling the handshake bad.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Where the response head ends (index just past "\r\n\r\n"), once it has all arrived.
pub fn response_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Ok if the head is a 101 upgrade; otherwise its status line, for the error report.
pub fn check_response(head: &[u8]) -> Result<(), String> {
    if head.starts_with(b"HTTP/1.1 101") {
        return Ok(());
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    Err(format!("server answered {:?}", String::from_utf8_lossy(line)))
}

/// Appends one final client-to-server frame to `out`: clients must mask everything they send.
pub fn push_masked_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.reserve(14 + payload.len());
    out.push(0x80 | opcode);
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
}

pub fn push_text_frame(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) {
    push_masked_frame(out, 0x1, payload, mask);
}

fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::new();
    push_masked_frame(&mut frame, opcode, payload, mask);
    frame
}

/// Close with 1000 (normal closure), sent when the hold period ends.
pub fn close_frame(mask: [u8; 4]) -> Vec<u8> {
    masked_frame(0x8, &1000u16.to_be_bytes(), mask)
}

struct Head {
    fin: bool,
    opcode: u8,
    head_len: usize,
    payload_len: u64,
    mask: Option<[u8; 4]>,
}

/// A frame's header, once all of it has arrived.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (len, mut head) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let key: [u8; 4] = buf.get(head..head + 4)?.try_into().ok()?;
        head += 4;
        Some(key)
    } else {
        None
    };
    Some(Head { fin: b0 & 0x80 != 0, opcode: b0 & 0x0F, head_len: head, payload_len: len, mask })
}

/// Largest message [`MessageReader`] assembles; the server's own default limit is 64 KiB.
pub const MAX_MESSAGE: u64 = 16 << 20;

/// What [`MessageReader`] hands on.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    /// A complete text message (fragments already joined).
    Text(&'a [u8]),
    Ping(&'a [u8]),
    /// Close code and reason, as received.
    Close(&'a [u8]),
}

/// Incremental reader for the modes that look at what the server sends: text messages
/// are handed over whole, usually straight out of the read buffer without a copy.
/// Binary messages and pongs are dropped.
#[derive(Default)]
pub struct MessageReader {
    /// An incomplete frame left over from the last read.
    buf: Vec<u8>,
    /// A fragmented message being joined, and whether it is text.
    fragments: Vec<u8>,
    fragments_text: bool,
}

impl MessageReader {
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Frame<'_>)) -> Result<(), &'static str> {
        if self.buf.is_empty() {
            // The common case: whole frames in one read, parsed where they lie.
            let used = parse_frames(data, &mut self.fragments, &mut self.fragments_text, &mut f)?;
            self.buf.extend_from_slice(&data[used..]);
        } else {
            self.buf.extend_from_slice(data);
            let buf = std::mem::take(&mut self.buf);
            let used = parse_frames(&buf, &mut self.fragments, &mut self.fragments_text, &mut f)?;
            self.buf = buf;
            self.buf.drain(..used);
        }
        if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new(); // one big message should not pin its buffer forever
        }
        Ok(())
    }
}

/// Hands on every complete frame in `buf`; returns how many bytes were used.
fn parse_frames(
    buf: &[u8],
    fragments: &mut Vec<u8>,
    fragments_text: &mut bool,
    f: &mut impl FnMut(Frame<'_>),
) -> Result<usize, &'static str> {
    let mut pos = 0;
    while let Some(head) = parse_head(&buf[pos..]) {
        if head.mask.is_some() {
            return Err("the server sent a masked frame");
        }
        if head.payload_len > MAX_MESSAGE {
            return Err("frame larger than 16 MiB");
        }
        if head.opcode & 0x8 != 0 && head.payload_len > 125 {
            return Err("control frame longer than 125 bytes");
        }
        let start = pos + head.head_len;
        let end = start + head.payload_len as usize;
        if buf.len() < end {
            break;
        }
        let payload = &buf[start..end];
        match head.opcode {
            0x1 if head.fin => f(Frame::Text(payload)),
            0x2 if head.fin => {} // binary: nothing we send comes back as binary
            0x1 | 0x2 => {
                fragments.clear();
                fragments.extend_from_slice(payload);
                *fragments_text = head.opcode == 0x1;
            }
            0x0 => {
                if fragments.len() as u64 + head.payload_len > MAX_MESSAGE {
                    return Err("message larger than 16 MiB");
                }
                fragments.extend_from_slice(payload);
                if head.fin {
                    if *fragments_text {
                        f(Frame::Text(fragments));
                    }
                    *fragments = Vec::new();
                }
            }
            0x8 => f(Frame::Close(payload)),
            0x9 => f(Frame::Ping(payload)),
            _ => {} // pong or reserved: ignore
        }
        pos = end;
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0u8; 16]), "AAAAAAAAAAAAAAAAAAAAAA==");
    }

    #[test]
    fn request_has_the_upgrade_headers() {
        let url = crate::opts::parse_ws_url("ws://127.0.0.1:9/x").unwrap();
        let req = String::from_utf8(upgrade_request(&url, &mut Rng::seeded(1))).unwrap();
        assert!(req.starts_with("GET /x HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(req.contains("Sec-WebSocket-Version: 13\r\n"));
        let key = req.split("Sec-WebSocket-Key: ").nth(1).unwrap();
        assert_eq!(key.split("\r\n").next().unwrap().len(), 24);
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn response_check() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x89\x00";
        let end = response_head_end(ok).unwrap();
        assert_eq!(&ok[end..], b"\x89\x00");
        assert!(check_response(&ok[..end]).is_ok());
        let err = check_response(b"HTTP/1.1 503 Busy\r\n\r\n").unwrap_err();
        assert!(err.contains("503 Busy"));
        assert_eq!(response_head_end(b"HTTP/1.1 101\r\n"), None);
    }

    #[test]
    fn control_frames_are_masked_and_echo_their_payload() {
        let mut pong = Vec::new();
        push_masked_frame(&mut pong, 0xA, b"abc", [1, 2, 3, 4]);
        assert_eq!(pong[..2], [0x8A, 0x83]);
        let unmasked: Vec<u8> = pong[6..].iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]).collect();
        assert_eq!(unmasked, b"abc");
        assert_eq!(close_frame([0; 4]), vec![0x88, 0x82, 0, 0, 0, 0, 3, 232]);
    }

    #[test]
    fn long_frames_use_extended_lengths() {
        let mut out = Vec::new();
        push_text_frame(&mut out, &[b'a'; 300], [0; 4]);
        assert_eq!(out[..4], [0x81, 0xFE, 1, 44]);
        assert_eq!(out.len(), 4 + 4 + 300);
        out.clear();
        push_text_frame(&mut out, &vec![b'a'; 70_000], [0; 4]);
        assert_eq!(out[..2], [0x81, 0xFF]);
        assert_eq!(u64::from_be_bytes(out[2..10].try_into().unwrap()), 70_000);
    }

    #[test]
    fn messages_split_anywhere_and_fragments_join() {
        // text "ab", ping "p", text "cd"+"ef" in two fragments, binary (dropped), 200-byte text, close
        let mut stream = vec![0x81, 2, b'a', b'b', 0x89, 1, b'p', 0x01, 2, b'c', b'd', 0x80, 2, b'e', b'f'];
        stream.extend([0x82, 1, 0]);
        stream.extend([0x81, 126, 0, 200]);
        stream.extend(std::iter::repeat_n(b'z', 200));
        stream.extend([0x88, 2, 3, 232]);
        for split in 1..stream.len() {
            let mut reader = MessageReader::default();
            let mut seen: Vec<String> = Vec::new();
            for chunk in stream.chunks(split) {
                reader
                    .feed(chunk, |frame| {
                        seen.push(match frame {
                            Frame::Text(t) => format!("text {}", t.len()),
                            Frame::Ping(p) => format!("ping {}", String::from_utf8_lossy(p)),
                            Frame::Close(c) => format!("close {c:?}"),
                        })
                    })
                    .unwrap();
            }
            assert_eq!(seen, ["text 2", "ping p", "text 4", "text 200", "close [3, 232]"], "split {split}");
        }
    }

    #[test]
    fn masked_server_frames_are_refused() {
        let mut reader = MessageReader::default();
        assert!(reader.feed(&[0x81, 0x81, 1, 2, 3, 4, b'x'], |_| {}).is_err());
    }

    #[test]
    fn oversized_control_frame_is_an_error() {
        let mut frame = vec![0x89, 126, 0, 200];
        frame.extend([0u8; 200]);
        assert!(MessageReader::default().feed(&frame, |_| {}).is_err());
    }
}
