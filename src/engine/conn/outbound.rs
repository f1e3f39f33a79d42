//! A connection's outbound queue: the frames it still owes its peer, in the order they
//! were queued, each a reference to bytes that may be shared with every other receiver of
//! the same message. Nothing is copied on the way in; the flush hands the queue to the
//! transport as one vectored write, and a partial write only moves an offset.
//!
//! While idle the queue is empty and owns no heap memory. One frame between two flushes
//! (a paced broadcast) sits in an inline slot; only a second waiting frame allocates the
//! overflow, which the connection keeps while busy and gives back when quiet
//! ([`Outbound::release`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};

use crate::frame::SharedFrame;

/// Most frames handed to one vectored write (the kernel takes up to `IOV_MAX`, 1024). The
/// slice array lives on the stack and is cleared for every write of several frames, so it
/// is kept small; a lone frame skips it.
pub(crate) const WRITE_BATCH: usize = 32;

#[derive(Default)]
pub(crate) struct Outbound {
    /// The oldest frame not fully written; its first `offset` bytes are out.
    head: Option<SharedFrame>,
    /// Frames queued behind `head`. Boxed: one pointer in every connection for a block
    /// that exists only while more than one frame waits.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<SharedFrame>>>,
    offset: u32,
    /// Bytes still owed: every queued frame, less what of the head is written.
    owed: u32,
}

impl Outbound {
    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Bytes queued and not yet written (what `--max-pending-bytes` limits).
    pub fn owed(&self) -> usize {
        self.owed as usize
    }

    /// Appends a frame; no copy, and no allocation while at most one frame waits.
    pub fn push(&mut self, frame: SharedFrame) {
        if frame.is_empty() {
            return;
        }
        self.owed = self.owed.saturating_add(frame.len() as u32);
        if self.head.is_none() {
            self.head = Some(frame);
        } else {
            self.rest.get_or_insert_with(Default::default).push_back(frame);
        }
    }

    /// Fills `slices` with the unwritten bytes, oldest first; returns how many it filled.
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; WRITE_BATCH]) -> usize {
        let Some(head) = &self.head else { return 0 };
        slices[0] = IoSlice::new(&head.as_bytes()[self.offset as usize..]);
        let mut filled = 1;
        if let Some(rest) = &self.rest {
            for (slot, frame) in slices[1..].iter_mut().zip(rest.iter()) {
                *slot = IoSlice::new(frame.as_bytes());
                filled += 1;
            }
        }
        filled
    }

    /// Drops what a write of `written` bytes took: whole frames, then an offset into the
    /// next one.
    pub fn advance(&mut self, mut written: usize) {
        self.owed -= written as u32;
        while let Some(head) = &self.head {
            let left = head.len() - self.offset as usize;
            if written < left {
                self.offset += written as u32;
                return;
            }
            written -= left;
            self.offset = 0;
            self.head = self.rest.as_mut().and_then(|rest| rest.pop_front());
        }
        debug_assert_eq!(written, 0, "advanced past the queue");
    }

    /// Gives back the overflow's memory once nothing waits in it.
    pub fn release(&mut self) {
        if self.rest.as_ref().is_some_and(|rest| rest.is_empty()) {
            self.rest = None;
        }
    }

    /// Owns heap memory of its own (beyond the frames, which belong to their senders).
    pub fn holds_memory(&self) -> bool {
        self.rest.is_some()
    }

    /// Writes as much as `send` takes; `Ok(true)` once the queue is empty.
    pub fn write_to(&mut self, mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>) -> io::Result<bool> {
        while let Some(head) = &self.head {
            let written = if self.rest.as_ref().is_none_or(|rest| rest.is_empty()) {
                // One frame between two flushes (a paced broadcast): the common case.
                send(&[IoSlice::new(&head.as_bytes()[self.offset as usize..])])
            } else {
                let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
                let filled = self.slices(&mut slices);
                send(&slices[..filled])
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// The stream tungstenite is given for one call: it reads the frame the framer exposed
/// (nothing, when only writing) and writes into this connection's queue, so its pongs
/// and close frames take their place in line with everything else the connection sends.
pub(crate) struct FrameIo<'a> {
    pub window: Option<&'a mut crate::engine::wire::Inbound>,
    pub out: &'a mut Outbound,
}

impl Read for FrameIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.window {
            Some(inbound) => inbound.read_window(buf),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for FrameIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Control frames only (pongs, close frames): small, and per connection anyway.
        self.out.push(SharedFrame::raw(buf.to_vec()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(frames: &[&'static [u8]]) -> Outbound {
        let mut out = Outbound::default();
        for frame in frames {
            out.push(SharedFrame::raw(frame.to_vec()));
        }
        out
    }

    /// Writes through a sink taking at most `step` bytes a call; returns what it got.
    fn drain(out: &mut Outbound, step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while !out.is_empty() {
            let done = out
                .write_to(|slices| {
                    let mut taken = 0;
                    for slice in slices {
                        let n = slice.len().min(step - taken);
                        got.extend_from_slice(&slice[..n]);
                        taken += n;
                        if taken == step {
                            break;
                        }
                    }
                    Ok(taken)
                })
                .unwrap();
            assert_eq!(done, out.is_empty());
        }
        got
    }

    #[test]
    fn partial_writes_keep_every_byte_in_order() {
        for step in 1..12 {
            let mut out = queue(&[b"abc", b"", b"defgh", b"i", b"jk"]);
            assert_eq!(out.owed(), 11);
            assert_eq!(drain(&mut out, step), b"abcdefghijk", "step {step}");
            assert_eq!(out.owed(), 0);
        }
    }

    #[test]
    fn one_frame_needs_no_allocation_and_overflow_is_released() {
        let mut out = queue(&[b"one"]);
        assert!(!out.holds_memory());
        out.push(SharedFrame::raw(b"two".to_vec()));
        assert!(out.holds_memory());
        drain(&mut out, 100);
        out.release();
        assert!(!out.holds_memory());
    }

    #[test]
    fn would_block_keeps_the_queue() {
        let mut out = queue(&[b"abc"]);
        assert!(!out.write_to(|_| Err(io::ErrorKind::WouldBlock.into())).unwrap());
        assert_eq!(out.owed(), 3);
        assert!(out.write_to(|_| Ok(0)).is_err(), "a write of nothing is an error, not a loop");
    }
}
