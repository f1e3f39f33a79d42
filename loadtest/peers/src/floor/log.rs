//! The shared outbound log: every broadcast frame, framed once, appended to one buffer.
//! Connections hold absolute offsets into it; bytes every connection has written are
//! let go. While everybody keeps up (the usual case) the whole log is dropped after each
//! pass, so it never holds more than one pass's frames.

/// Above this many bytes still held for a slow reader, look for the oldest offset and
/// drop what precedes it, instead of waiting until everybody has caught up.
const TRIM_AT: usize = 1 << 20;

#[derive(Default)]
pub struct Log {
    bytes: Vec<u8>,
    /// Absolute offset of `bytes[0]`.
    base: u64,
}

impl Log {
    /// Absolute offset just past the last frame: where the next frame will start.
    pub fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends one server frame: the only place a broadcast message is encoded.
    pub fn push_frame(&mut self, opcode: u8, payload: &[u8]) {
        crate::frame::push(&mut self.bytes, opcode, payload);
    }

    /// The bytes between two absolute offsets, both within the log.
    pub fn range(&self, from: u64, to: u64) -> &[u8] {
        &self.bytes[(from - self.base) as usize..(to - self.base) as usize]
    }

    pub fn worth_trimming(&self) -> bool {
        self.bytes.len() > TRIM_AT
    }

    /// Lets go of everything before absolute offset `to` (nobody is owed it any more).
    pub fn trim_to(&mut self, to: u64) {
        let cut = (to.saturating_sub(self.base) as usize).min(self.bytes.len());
        if cut == self.bytes.len() {
            self.bytes.clear();
            if self.bytes.capacity() > TRIM_AT {
                self.bytes = Vec::new(); // a burst's buffer is not kept while idle
            }
        } else {
            self.bytes.drain(..cut);
        }
        self.base += cut as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_survive_trimming() {
        let mut log = Log::default();
        log.push_frame(crate::frame::TEXT, b"one");
        let first_end = log.end();
        log.push_frame(crate::frame::TEXT, b"two");
        assert_eq!(log.range(0, first_end), b"\x81\x03one");
        log.trim_to(first_end);
        assert_eq!(log.range(first_end, log.end()), b"\x81\x03two");
        log.trim_to(log.end());
        assert!(log.is_empty());
        assert_eq!(log.end(), 10);
    }
}
