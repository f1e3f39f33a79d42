//! The message formats of the fanout and echo modes, and the bookkeeping of what one
//! subscriber has received from one publisher. All pure functions, so they are tested
//! here rather than against a server.
//!
//! Server frames are read with small byte scans instead of a JSON parser: a fanout run
//! delivers millions of frames, the fields we need are numbers under fixed keys, and
//! wshub writes every frame as `{"type":"...",...}` with `data` passed through verbatim.

use std::fmt::Write as _;
use std::ops::Range;

/// What a delivered message carries: send time (CLOCK_MONOTONIC ns), publisher index
/// and sequence number within that publisher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t: u64,
    pub p: u64,
    pub s: u64,
}

/// The `type` of a hub frame: `{"type":"ack",...}` gives `b"ack"`.
pub fn hub_type(payload: &[u8]) -> Option<&[u8]> {
    let rest = payload.strip_prefix(br#"{"type":""#)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// The unsigned integer right after the first occurrence of `key` (e.g. `"id":`).
pub fn number_after(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(payload, key, 0)? + key.len();
    parse_digits(&payload[at..]).map(|(n, _)| n)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// A run of ASCII digits at the start of `text`: (value, digits used).
fn parse_digits(text: &[u8]) -> Option<(u64, usize)> {
    let len = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    let value = text[..len].iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some((value, len))
}

/// Every sample in a hub `message` (one `data` object) or `batch` (a list of them).
/// The keys are found in order: `"t":` cannot occur elsewhere in such a frame (the
/// envelope's keys are `type`, `topic`, `from`, `ts`, `d`, and strings escape their
/// quotes), and the padding is plain `x`s. Returns how many samples were malformed.
pub fn hub_samples(payload: &[u8], mut f: impl FnMut(Sample)) -> u64 {
    let mut pos = 0;
    let mut malformed = 0;
    while let Some(at) = find(payload, br#""t":"#, pos) {
        let next = |key: &[u8], from: usize| -> Option<(u64, usize)> {
            let at = find(payload, key, from)? + key.len();
            parse_digits(&payload[at..]).map(|(n, len)| (n, at + len))
        };
        let sample = next(br#""t":"#, at).and_then(|(t, after_t)| {
            let (p, after_p) = next(br#""p":"#, after_t)?;
            let (s, after_s) = next(br#""s":"#, after_p)?;
            Some((Sample { t, p, s }, after_s))
        });
        match sample {
            Some((sample, end)) => {
                f(sample);
                pos = end;
            }
            None => {
                malformed += 1;
                pos = at + 4;
            }
        }
    }
    malformed
}

/// A raw-protocol message: `"<t> <p> <s> <padding>"`.
pub fn raw_sample(payload: &[u8]) -> Option<Sample> {
    let mut fields = payload.split(|&b| b == b' ');
    let mut num = || {
        let field = fields.next()?;
        parse_digits(field).filter(|&(_, len)| len == field.len()).map(|(n, _)| n)
    };
    Some(Sample { t: num()?, p: num()?, s: num()? })
}

/// Builds the frames publishers send, reusing one buffer.
pub struct Publisher {
    /// The hub frame up to its `data`.
    head: String,
    size: usize,
}

impl Publisher {
    pub fn new(topic: &str, size: usize) -> Publisher {
        let topic = serde_json::to_string(topic).expect("a string serializes");
        Publisher { head: format!(r#"{{"type":"publish","topic":{topic},"data":"#), size }
    }

    /// Hub frames that broadcast (to every connection) instead of publishing to a topic.
    pub fn broadcasting(size: usize) -> Publisher {
        Publisher { head: r#"{"type":"broadcast","data":"#.to_string(), size }
    }

    /// `{"type":"publish","topic":T,"data":{"t":..,"p":..,"s":..,"x":"xx.."},"id":s}` (or
    /// `{"type":"broadcast","data":...,"id":s}`) with the padding chosen so that `data` is
    /// `size` bytes (or as small as it can be).
    pub fn hub(&self, out: &mut String, sample: Sample) {
        out.clear();
        let Sample { t, p, s } = sample;
        out.push_str(&self.head);
        let data_start = out.len();
        let _ = write!(out, r#"{{"t":{t},"p":{p},"s":{s},"x":""#);
        let unpadded = out.len() - data_start + 2; // plus the closing `"}`
        pad(out, self.size.saturating_sub(unpadded));
        let _ = write!(out, r#""}},"id":{s}}}"#);
    }

    /// `"<t> <p> <s> xx.."`, padded to `size` bytes.
    pub fn raw(&self, out: &mut String, sample: Sample) {
        out.clear();
        let _ = write!(out, "{} {} {} ", sample.t, sample.p, sample.s);
        pad(out, self.size.saturating_sub(out.len()));
    }
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n('x', n));
}

/// How a sequence number relates to what a subscriber already had from that publisher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seen {
    /// New, and in order (or after a gap, which may yet be filled or become loss).
    Fresh,
    /// New, but after a higher number from the same publisher had already arrived.
    Late,
    Duplicate,
}

/// What one subscriber has received from one publisher. wshub delivers one
/// publisher's messages in order, so normally this is one counter; numbers skipped
/// over are remembered, as ranges, only when a gap actually happens. Exact, and small
/// however long the run or the gap (no bitmap of every message per subscriber).
#[derive(Debug, Default, Clone)]
pub struct SeqTrack {
    /// One past the highest number seen.
    next: u64,
    /// Ranges below `next` not seen yet, sorted and disjoint.
    missing: Vec<Range<u64>>,
}

impl SeqTrack {
    pub fn observe(&mut self, s: u64) -> Seen {
        if s >= self.next {
            if s > self.next {
                self.missing.push(self.next..s);
            }
            self.next = s + 1;
            return Seen::Fresh;
        }
        // The last range starting at or before s is the only one that can hold it.
        let i = self.missing.partition_point(|r| r.start <= s);
        match i.checked_sub(1).filter(|&i| self.missing[i].contains(&s)) {
            None => Seen::Duplicate,
            Some(i) => {
                let range = self.missing.remove(i);
                let parts = [range.start..s, s + 1..range.end];
                let kept = parts.into_iter().filter(|r| !r.is_empty());
                self.missing.splice(i..i, kept);
                Seen::Late
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_frames_are_classified() {
        assert_eq!(hub_type(br#"{"type":"ack","id":12}"#), Some(&b"ack"[..]));
        assert_eq!(hub_type(br#"{"type":"welcome","conn":1,"user":"1"}"#), Some(&b"welcome"[..]));
        assert_eq!(hub_type(br#"["type"]"#), None);
        assert_eq!(number_after(br#"{"type":"ack","id":12}"#, br#""id":"#), Some(12));
        assert_eq!(number_after(br#"{"type":"ack","id":"x"}"#, br#""id":"#), None);
        assert_eq!(number_after(br#"{"type":"pong"}"#, br#""id":"#), None);
    }

    #[test]
    fn samples_from_message_and_batch() {
        let publisher = Publisher::new("bench", 64);
        let mut frame = String::new();
        publisher.hub(&mut frame, Sample { t: 123456789, p: 1, s: 7 });
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "publish");
        assert_eq!(v["id"], 7);
        // The server forwards `data` verbatim, so take it from the frame as written
        // (re-serializing a Value would sort its keys).
        let data = &frame[frame.find(r#""data":"#).unwrap() + 7..frame.find(r#","id":"#).unwrap()];
        assert_eq!(data.len(), 64);

        let message = format!(r#"{{"type":"message","topic":"bench","from":"t","data":{data},"ts":1}}"#);
        let mut got = Vec::new();
        assert_eq!(hub_samples(message.as_bytes(), |s| got.push(s)), 0);
        assert_eq!(got, vec![Sample { t: 123456789, p: 1, s: 7 }]);

        let batch = r#"{"type":"batch","topic":"b","d":[{"t":1,"p":0,"s":0,"x":""},{"t":2,"p":3,"s":1},{"t":9}]}"#;
        got.clear();
        assert_eq!(hub_samples(batch.as_bytes(), |s| got.push(s)), 1, "the last item has no p and s");
        assert_eq!(got, vec![Sample { t: 1, p: 0, s: 0 }, Sample { t: 2, p: 3, s: 1 }]);
    }

    #[test]
    fn broadcast_frames() {
        let mut frame = String::new();
        Publisher::broadcasting(64).hub(&mut frame, Sample { t: 5, p: 0, s: 2 });
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!((v["type"].as_str(), v.get("topic"), &v["id"]), (Some("broadcast"), None, &serde_json::json!(2)));
        let data = &frame[frame.find(r#""data":"#).unwrap() + 7..frame.find(r#","id":"#).unwrap()];
        assert_eq!(data.len(), 64);
        let message = format!(r#"{{"type":"message","from":"t","data":{data},"ts":1}}"#);
        let mut got = Vec::new();
        assert_eq!(hub_samples(message.as_bytes(), |s| got.push(s)), 0);
        assert_eq!(got, vec![Sample { t: 5, p: 0, s: 2 }]);
    }

    #[test]
    fn small_sizes_do_not_underflow() {
        let publisher = Publisher::new("a\"b", 0);
        let mut frame = String::new();
        publisher.hub(&mut frame, Sample { t: 1, p: 2, s: 3 });
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["topic"], "a\"b");
        assert_eq!(v["data"]["x"], "");
        publisher.raw(&mut frame, Sample { t: 1, p: 2, s: 3 });
        assert_eq!(frame, "1 2 3 ");
    }

    #[test]
    fn raw_messages() {
        let publisher = Publisher::new("unused", 40);
        let mut frame = String::new();
        publisher.raw(&mut frame, Sample { t: 99, p: 0, s: 5 });
        assert_eq!(frame.len(), 40);
        assert_eq!(raw_sample(frame.as_bytes()), Some(Sample { t: 99, p: 0, s: 5 }));
        assert_eq!(raw_sample(b"1 2 3"), Some(Sample { t: 1, p: 2, s: 3 }));
        assert_eq!(raw_sample(b"1 2"), None);
        assert_eq!(raw_sample(b"1 2x 3 "), None);
        assert_eq!(raw_sample(b"hello"), None);
    }

    #[test]
    fn sequence_tracking() {
        let mut t = SeqTrack::default();
        assert_eq!(t.observe(0), Seen::Fresh);
        assert_eq!(t.observe(1), Seen::Fresh);
        assert_eq!(t.observe(1), Seen::Duplicate);
        assert_eq!(t.observe(4), Seen::Fresh, "a gap: 2 and 3 are missing");
        assert_eq!(t.observe(3), Seen::Late);
        assert_eq!(t.observe(3), Seen::Duplicate);
        assert_eq!(t.observe(2), Seen::Late);
        assert_eq!(t.observe(5), Seen::Fresh);
        assert!(t.missing.is_empty());
        assert_eq!(t.observe(0), Seen::Duplicate);
    }

    #[test]
    fn a_huge_gap_is_one_range() {
        let mut t = SeqTrack::default();
        assert_eq!(t.observe(1_000_000_000), Seen::Fresh);
        assert_eq!(t.missing, vec![0..1_000_000_000]);
        assert_eq!(t.observe(500), Seen::Late);
        assert_eq!(t.missing, vec![0..500, 501..1_000_000_000]);
        assert_eq!(t.observe(500), Seen::Duplicate);
        assert_eq!(t.observe(0), Seen::Late);
        assert_eq!(t.observe(499), Seen::Late);
        assert_eq!(t.missing, vec![1..499, 501..1_000_000_000]);
        assert_eq!(t.observe(1_000_000_000), Seen::Duplicate);
        assert_eq!(t.observe(999_999_999), Seen::Late);
        assert_eq!(t.missing, vec![1..499, 501..999_999_999]);
    }
}
