//! Incremental server-sent-events parser.
//!
//! Implements the WHATWG "event stream interpretation" algorithm (HTML Living Standard,
//! server-sent events) for a byte stream that arrives in arbitrary pieces, as LLM providers
//! stream their answers. What it does, rule by rule:
//!
//! - **Line endings.** A line ends with CR, LF or CRLF. A CR that ends one chunk and an LF that
//!   starts the next are one line ending. A line is handled as soon as its terminator arrives;
//!   a line ended by CR is not held back waiting for a possible LF.
//! - **BOM.** One UTF-8 byte order mark at the very start of the stream is skipped, also when
//!   the chunk boundary falls inside it. A BOM anywhere else is ordinary (invalid field) text.
//! - **UTF-8.** A chunk may end anywhere, even inside a multi-byte character: only complete
//!   lines are decoded. Invalid UTF-8 becomes U+FFFD, as the standard's decoder does. Line
//!   terminators and `:` are ASCII, so decoding line by line gives the same text as decoding the
//!   whole stream first.
//! - **Fields.** A line starting with `:` is a comment. Otherwise the field name runs to the
//!   first `:` and the value follows it, minus one leading space; a line without `:` is a field
//!   with an empty value. Unknown fields are ignored.
//!   - `data`: appended to the data buffer; several `data` lines are joined with `\n`.
//!   - `event`: sets the event type of the event being built (empty means `message`).
//!   - `id`: sets the last event id buffer, unless the value contains NUL (then ignored). The id
//!     persists across events until the server sets another one (`id` with an empty value
//!     clears it).
//!   - `retry`: a value of ASCII digits only sets the reconnection time in milliseconds; any
//!     other value, an empty one, or one that overflows `u64` is ignored.
//! - **Dispatch.** A blank line dispatches the event. Its `id` is the last event id in effect
//!   at that moment (the `lastEventId` a browser would report), and the parser's
//!   [`SseParser::last_event_id`] becomes that id, as the standard's step 1 says, even when no
//!   event is dispatched. If no `data` line was seen since the previous dispatch, no event is
//!   dispatched and the event type is reset. [`Event::retry`] carries a `retry` value set since
//!   the previous dispatched event (so a `retry`-only block at the start of a stream is
//!   forwarded with the first event); [`SseParser::retry`] gives the reconnection time in
//!   effect.
//! - **End of stream.** [`SseParser::finish`] discards an unfinished event, as the standard
//!   requires ("any pending data must be discarded"): a last event without its blank line, or a
//!   last line without its line ending, is never dispatched, so `finish` never returns an
//!   event. It resets the per-stream state (line buffer, data, event type, id buffer, BOM
//!   detection) and keeps what the standard keeps per event source across reconnections: the
//!   last event id and the reconnection time. The parser can then read the next response of
//!   the same event source.
//! - **Line cap.** A line longer than `max_line_bytes` (counted without its terminator, and
//!   checked as the bytes arrive, so memory stays bounded) fails with
//!   [`SseError::LineTooLong`]: a misbehaving upstream must not make the gateway buffer
//!   without bound. The rest of that chunk is dropped; the stream should be abandoned.
//!
//! [`Event::to_wire`] writes an event back in canonical form so the gateway can forward it.

use memchr::{memchr, memchr2};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The default line cap: 1 MiB, far above any real event line.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;

/// Errors of the SSE parser and of events built to be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line grew past the parser's cap before its line ending arrived.
    #[error("event-stream line longer than the limit of {limit} bytes (`max_line_bytes`)")]
    LineTooLong { limit: usize },
    /// An event's `event` or `id` contains CR or LF, which would end the line on the wire.
    #[error("event field `{field}` contains a line break (CR or LF); expected a single line")]
    LineBreakInField { field: &'static str },
    /// An event's `id` contains NUL, which every client ignores.
    #[error("event field `id` contains NUL; clients ignore such an id")]
    NulInId,
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Event {
    /// The event type; `None` means the default type, `message`.
    pub event: Option<String>,
    /// The data lines joined with `\n`.
    pub data: String,
    /// The last event id in effect when the event was dispatched; `None` when there is none.
    pub id: Option<String>,
    /// A reconnection time (milliseconds) set by `retry` since the previous dispatched event.
    pub retry: Option<u64>,
}

impl Event {
    /// Check that the event can be written as one wire event that parses back to it: `event`
    /// and `id` must be single lines and `id` must not contain NUL. Events from [`SseParser`]
    /// always pass; this is for events built elsewhere before [`Event::to_wire`].
    pub fn validate(&self) -> Result<(), SseError> {
        if let Some(event) = &self.event {
            if memchr2(b'\r', b'\n', event.as_bytes()).is_some() {
                return Err(SseError::LineBreakInField { field: "event" });
            }
        }
        if let Some(id) = &self.id {
            if memchr2(b'\r', b'\n', id.as_bytes()).is_some() {
                return Err(SseError::LineBreakInField { field: "id" });
            }
            if memchr(0, id.as_bytes()).is_some() {
                return Err(SseError::NulInId);
            }
        }
        Ok(())
    }

    /// Append the event in canonical wire form (see [`EventRef::write_wire`]).
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        self.as_ref().write_wire(out);
    }

    /// The event, borrowed.
    pub fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            event: self.event.as_deref(),
            data: &self.data,
            id: self.id.as_deref(),
            retry: self.retry,
            single_line: false,
        }
    }

    /// The event in canonical wire form (see [`Event::write_wire`]).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 32);
        self.write_wire(&mut out);
        out
    }
}

/// One dispatched event, borrowed from the parser: what [`SseParser::feed_with`] hands its
/// visitor, so a caller that only forwards or inspects events allocates nothing per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// The event type; `None` means the default type, `message`.
    pub event: Option<&'a str>,
    /// The data lines joined with `\n`.
    pub data: &'a str,
    /// The last event id in effect when the event was dispatched.
    pub id: Option<&'a str>,
    /// A reconnection time (milliseconds) set by `retry` since the previous dispatched event.
    pub retry: Option<u64>,
    /// Whether `data` came from one `data` line, so it holds no line break: a relay can write
    /// it back as one line without scanning it again. `false` when not known.
    pub single_line: bool,
}

impl EventRef<'_> {
    pub fn to_owned_event(&self) -> Event {
        Event {
            event: self.event.map(str::to_owned),
            data: self.data.to_owned(),
            id: self.id.map(str::to_owned),
            retry: self.retry,
        }
    }

    /// Append the event in canonical wire form: `event: …` when the type is set and not empty,
    /// `id: …` when set, `retry: …` when set, one `data: …` line per line of data (CR, LF and
    /// CRLF in `data` all count as line breaks, so `data` can never break the framing), then a
    /// blank line.
    ///
    /// Written per event, an absent `id` means "unchanged" to the reader, so a sequence whose
    /// id goes from set to unset does not round-trip (the reader keeps the old id). Events
    /// from [`SseParser`] only do that when the server clears its id, which LLM providers do
    /// not use. `event` and `id` must pass [`Event::validate`].
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        if let Some(event) = self.event.filter(|e| !e.is_empty()) {
            write_field(out, b"event: ", event.as_bytes());
        }
        if let Some(id) = self.id {
            write_field(out, b"id: ", id.as_bytes());
        }
        if let Some(retry) = self.retry {
            write_field(out, b"retry: ", format_u64(retry, &mut [0; 20]));
        }
        write_data(out, self.data);
        out.push(b'\n');
    }
}

/// `data: …` lines for `data`, split at CR, LF and CRLF.
fn write_data(out: &mut Vec<u8>, data: &str) {
    let mut rest = data.as_bytes();
    while let Some(end) = memchr2(b'\r', b'\n', rest) {
        write_field(out, b"data: ", &rest[..end]);
        let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
        rest = &rest[end + 1 + usize::from(crlf)..];
    }
    write_field(out, b"data: ", rest);
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Decimal digits of `n`, written into the end of `buf`.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

/// The value of a `data` line as text (minus one leading space), if the line is a `data` field
/// and valid UTF-8 (invalid UTF-8 takes the general path, which replaces it).
fn data_line_value(line: &[u8]) -> Option<&str> {
    let value = line.strip_prefix(b"data")?;
    let value = match value.first() {
        None => value,
        Some(b':') => value[1..].strip_prefix(b" ").unwrap_or(&value[1..]),
        Some(_) => return None,
    };
    simdutf8::basic::from_utf8(value).ok()
}

/// The value of a `retry` field: ASCII digits only, fitting in `u64`.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        acc.checked_mul(10)?.checked_add(digit)
    })
}

fn push_lossy(buf: &mut String, bytes: &[u8]) {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => buf.push_str(text),
        Err(_) => buf.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// An incremental parser: feed it the chunks of one stream, collect events. See the module
/// documentation for the exact rules.
#[derive(Debug, Clone)]
pub struct SseParser {
    max_line: usize,
    // Per stream (reset by `finish`).
    /// Bytes of an unfinished line carried over from earlier chunks; the allocation is reused.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF at the start of the next one belongs to it.
    after_cr: bool,
    /// Whether the start of the stream has been checked for a BOM.
    bom_checked: bool,
    /// How many bytes of a BOM have been held back while the check is undecided (0 to 2).
    bom_held: usize,
    /// Data lines joined with `\n`, without the standard's trailing `\n` (see `saw_data`).
    data: String,
    /// A `data` line was seen since the last dispatch; the standard's "data buffer is not
    /// empty", which cannot be read from `data` since one empty `data` line leaves it empty.
    saw_data: bool,
    /// More than one `data` line since the last dispatch (`data` holds a line break).
    multiline: bool,
    event_type: String,
    id_buffer: String,
    pending_retry: Option<u64>,
    // Per event source (kept by `finish`).
    last_event_id: String,
    retry: Option<u64>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE_BYTES)
    }
}

impl SseParser {
    /// A parser that rejects lines longer than `max_line_bytes`.
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            max_line: max_line_bytes,
            line: Vec::new(),
            after_cr: false,
            bom_checked: false,
            bom_held: 0,
            data: String::new(),
            saw_data: false,
            multiline: false,
            event_type: String::new(),
            id_buffer: String::new(),
            pending_retry: None,
            last_event_id: String::new(),
            retry: None,
        }
    }

    /// The last event id as of the last dispatch (`None` when none was set, or it was
    /// cleared): what a client sends as `Last-Event-ID` when it reconnects.
    pub fn last_event_id(&self) -> Option<&str> {
        (!self.last_event_id.is_empty()).then_some(self.last_event_id.as_str())
    }

    /// The reconnection time the stream asked for with `retry`, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Parse a chunk and return the events it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut events = Vec::new();
        self.feed_into(chunk, &mut events)?;
        Ok(events)
    }

    /// Parse a chunk, appending the events it completes to `out`. On error, the events
    /// completed before the overlong line are in `out`.
    pub fn feed_into(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        self.feed_with(chunk, &mut |event: EventRef<'_>| {
            out.push(event.to_owned_event())
        })
    }

    /// Parse a chunk, handing each event it completes to `visit`, in order, borrowed (no
    /// allocation per event). On error, the events completed before the overlong line have
    /// been visited.
    pub fn feed_with<F: FnMut(EventRef<'_>)>(
        &mut self,
        chunk: &[u8],
        out: &mut F,
    ) -> Result<(), SseError> {
        if self.bom_checked {
            return self.feed_lines(chunk, out);
        }
        let wanted = &BOM[self.bom_held..];
        let n = wanted.len().min(chunk.len());
        if chunk[..n] == wanted[..n] {
            if n < wanted.len() {
                // Still a possible BOM, and the chunk is used up: wait for more bytes.
                self.bom_held += n;
                return Ok(());
            }
            self.bom_checked = true;
            return self.feed_lines(&chunk[n..], out);
        }
        // Not a BOM: the bytes held back are the start of the first line.
        self.bom_checked = true;
        let held = &BOM[..std::mem::take(&mut self.bom_held)];
        self.feed_lines(held, out)?;
        self.feed_lines(chunk, out)
    }

    /// End of stream: discard an unfinished event, as the standard requires, and reset the
    /// per-stream state so the parser can read the event source's next response. The last
    /// event id and the reconnection time are kept. Always returns no events (the standard
    /// never dispatches at end of stream); the signature matches [`SseParser::feed`] so a
    /// caller can handle both alike.
    pub fn finish(&mut self) -> Result<Vec<Event>, SseError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        *self = Self {
            line,
            last_event_id: std::mem::take(&mut self.last_event_id),
            retry: self.retry,
            ..Self::new(self.max_line)
        };
        Ok(Vec::new())
    }

    fn feed_lines<F: FnMut(EventRef<'_>)>(
        &mut self,
        chunk: &[u8],
        out: &mut F,
    ) -> Result<(), SseError> {
        let mut rest = chunk;
        if rest.is_empty() {
            return Ok(()); // an empty chunk must not end a pending CR's wait for its LF
        }
        if std::mem::take(&mut self.after_cr) {
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(end) = memchr2(b'\r', b'\n', rest) {
            let part = &rest[..end];
            if self.line.is_empty() {
                // The common case: the whole line is inside this chunk, no copy.
                self.check_len(part.len())?;
                // The most common case of all (every LLM token): one `data` line and the
                // blank line that ends its event, both here. Dispatch straight from the
                // chunk; the result is what the general path gives, without the copy.
                if !self.saw_data && rest.get(end..end + 2) == Some(b"\n\n") {
                    if let Some(data) = data_line_value(part) {
                        self.dispatch_single(data, out);
                        rest = &rest[end + 2..];
                        continue;
                    }
                }
                self.process_line(part, out);
            } else {
                self.check_len(self.line.len() + part.len())?;
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(part);
                // A `data` line split across chunks (one per network read on a busy stream):
                // the same shortcut as above once it is whole.
                let single = !self.saw_data && rest.get(end..end + 2) == Some(b"\n\n");
                let dispatched = match single.then(|| data_line_value(&line)).flatten() {
                    Some(data) => {
                        self.dispatch_single(data, out);
                        true
                    }
                    None => {
                        self.process_line(&line, out);
                        false
                    }
                };
                line.clear();
                self.line = line;
                if dispatched {
                    rest = &rest[end + 2..];
                    continue;
                }
            }
            if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => rest = &rest[end + 2..],
                    Some(_) => rest = &rest[end + 1..],
                    None => {
                        self.after_cr = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[end + 1..];
            }
        }
        if !rest.is_empty() {
            self.check_len(self.line.len() + rest.len())?;
            self.line.extend_from_slice(rest);
        }
        Ok(())
    }

    fn check_len(&mut self, len: usize) -> Result<(), SseError> {
        if len > self.max_line {
            self.line.clear();
            return Err(SseError::LineTooLong {
                limit: self.max_line,
            });
        }
        Ok(())
    }

    fn process_line<F: FnMut(EventRef<'_>)>(&mut self, line: &[u8], out: &mut F) {
        let (field, value) = match line.first() {
            None => return self.dispatch(out),
            Some(b':') => return,
            Some(_) => match memchr(b':', line) {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            },
        };
        match field {
            b"data" => {
                if self.saw_data {
                    self.data.push('\n');
                    self.multiline = true;
                }
                self.saw_data = true;
                push_lossy(&mut self.data, value);
            }
            b"event" => {
                self.event_type.clear();
                push_lossy(&mut self.event_type, value);
            }
            b"id" if memchr(0, value).is_none() => {
                self.id_buffer.clear();
                push_lossy(&mut self.id_buffer, value);
            }
            b"retry" => {
                if let Some(ms) = parse_retry(value) {
                    self.retry = Some(ms);
                    self.pending_retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    /// Dispatch an event whose only data line is `data`, seen with no data before it.
    fn dispatch_single<F: FnMut(EventRef<'_>)>(&mut self, data: &str, out: &mut F) {
        // (Both empty on every LLM stream: skip the comparison call.)
        if !(self.last_event_id.is_empty() && self.id_buffer.is_empty())
            && self.last_event_id != self.id_buffer
        {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        out(EventRef {
            event: (!self.event_type.is_empty()).then_some(self.event_type.as_str()),
            data,
            id: (!self.last_event_id.is_empty()).then_some(self.last_event_id.as_str()),
            retry: self.pending_retry.take(),
            single_line: true,
        });
        self.event_type.clear();
    }

    fn dispatch<F: FnMut(EventRef<'_>)>(&mut self, out: &mut F) {
        if !(self.last_event_id.is_empty() && self.id_buffer.is_empty())
            && self.last_event_id != self.id_buffer
        {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        if !std::mem::take(&mut self.saw_data) {
            self.event_type.clear();
            return;
        }
        out(EventRef {
            event: (!self.event_type.is_empty()).then_some(self.event_type.as_str()),
            data: &self.data,
            id: (!self.last_event_id.is_empty()).then_some(self.last_event_id.as_str()),
            retry: self.pending_retry.take(),
            single_line: !std::mem::take(&mut self.multiline),
        });
        // Cleared, not taken: the allocations are reused by the next event.
        self.data.clear();
        self.event_type.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(input: &[u8]) -> Vec<Event> {
        SseParser::default().feed(input).unwrap()
    }

    fn data(d: &str) -> Event {
        Event {
            data: d.into(),
            ..Event::default()
        }
    }

    fn with_id(d: &str, id: &str) -> Event {
        Event {
            id: Some(id.into()),
            ..data(d)
        }
    }

    #[test]
    fn single_data_event() {
        assert_eq!(parse(b"data: hello\n\n"), vec![data("hello")]);
    }

    #[test]
    fn multi_line_data_is_joined_with_lf_and_the_trailing_lf_removed() {
        assert_eq!(parse(b"data: a\ndata: b\ndata:\n\n"), vec![data("a\nb\n")]);
        assert_eq!(parse(b"data\n\n"), vec![data("")]);
    }

    #[test]
    fn only_one_leading_space_is_removed() {
        assert_eq!(
            parse(b"data:  two\n\ndata:none\n\ndata: \n\n"),
            vec![data(" two"), data("none"), data("")]
        );
    }

    #[test]
    fn value_runs_from_the_first_colon() {
        assert_eq!(parse(b"data: a: b:c\n\n"), vec![data("a: b:c")]);
    }

    #[test]
    fn event_type_applies_to_one_event() {
        let events = parse(b"event: delta\ndata: 1\n\ndata: 2\n\n");
        assert_eq!(events[0].event.as_deref(), Some("delta"));
        assert_eq!(events[1].event, None);
    }

    #[test]
    fn empty_event_type_means_message() {
        assert_eq!(parse(b"event: x\nevent:\ndata: x\n\n")[0].event, None);
    }

    #[test]
    fn block_without_data_is_not_dispatched_and_resets_type() {
        assert_eq!(parse(b"event: ping\n\ndata: x\n\n"), vec![data("x")]);
        assert_eq!(parse(b"event: ping\nid: 1\nretry: 5\n\n"), vec![]);
    }

    #[test]
    fn id_is_the_last_id_in_effect_and_persists() {
        let mut p = SseParser::default();
        let events = p
            .feed(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\n\ndata: c\n\n")
            .unwrap();
        assert_eq!(
            events,
            vec![with_id("a", "7"), with_id("b", "7"), with_id("c", "8")]
        );
        assert_eq!(p.last_event_id(), Some("8"));
    }

    #[test]
    fn id_with_nul_is_ignored() {
        let mut p = SseParser::default();
        let events = p.feed(b"id: 7\n\nid: x\0y\ndata: c\n\n").unwrap();
        assert_eq!(events, vec![with_id("c", "7")]);
        assert_eq!(p.last_event_id(), Some("7"));
    }

    #[test]
    fn empty_id_clears_the_last_event_id() {
        let mut p = SseParser::default();
        let events = p.feed(b"id: 7\ndata: a\n\nid\ndata: b\n\n").unwrap();
        assert_eq!(events, vec![with_id("a", "7"), data("b")]);
        assert_eq!(p.last_event_id(), None);
    }

    #[test]
    fn last_event_id_changes_only_at_dispatch() {
        // The standard copies the id buffer to the source's last event id in dispatch step 1.
        let mut p = SseParser::default();
        p.feed(b"id: 1\n\nid: 2\ndata: x\n").unwrap();
        assert_eq!(p.last_event_id(), Some("1"));
        p.feed(b"\n").unwrap();
        assert_eq!(p.last_event_id(), Some("2"));
    }

    #[test]
    fn retry_takes_only_ascii_digits() {
        let mut p = SseParser::default();
        let events = p
            .feed(b"retry: 1500\ndata: a\n\nretry: 12x\ndata: b\n\nretry\n\nretry: -1\n\nretry: +2\n\n")
            .unwrap();
        assert_eq!(events[0].retry, Some(1500));
        assert_eq!(events[1].retry, None);
        assert_eq!(p.retry(), Some(1500));
        p.feed(b"retry: 99999999999999999999999\n\n").unwrap();
        assert_eq!(p.retry(), Some(1500), "an overflowing value is ignored");
        p.feed(b"retry: 0\n\n").unwrap();
        assert_eq!(p.retry(), Some(0));
        p.feed(b"retry: 18446744073709551615\n\n").unwrap();
        assert_eq!(p.retry(), Some(u64::MAX));
    }

    #[test]
    fn retry_in_a_data_less_block_travels_with_the_next_event() {
        let events = parse(b"retry: 3000\n\ndata: a\n\ndata: b\n\n");
        assert_eq!(events[0].retry, Some(3000));
        assert_eq!(events[1].retry, None);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        assert_eq!(
            parse(b": keep-alive\nfoo: bar\nData: no\ndata : no\ndata: x\n:another\n\n"),
            vec![data("x")]
        );
        assert_eq!(parse(b": only a comment\n\n"), vec![]);
    }

    #[test]
    fn field_without_colon_has_empty_value() {
        assert_eq!(parse(b"data\ndata\n\n"), vec![data("\n")]);
    }

    #[test]
    fn all_line_endings() {
        let want = vec![data("a"), data("b"), data("c"), data("d")];
        assert_eq!(
            parse(b"data: a\r\n\r\ndata: b\r\rdata: c\n\ndata: d\r\n\n"),
            want
        );
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let mut p = SseParser::default();
        let mut events = p.feed(b"data: a\r").unwrap();
        events.extend(p.feed(b"\ndata: b\r").unwrap());
        events.extend(p.feed(b"\n").unwrap());
        assert_eq!(events, vec![], "two lines, no blank line yet");
        events.extend(p.feed(b"\r").unwrap());
        events.extend(p.feed(b"\n").unwrap());
        assert_eq!(events, vec![data("a\nb")]);
    }

    #[test]
    fn cr_ended_line_is_handled_before_the_next_chunk() {
        let mut p = SseParser::default();
        assert_eq!(p.feed(b"data: a\r\r").unwrap(), vec![data("a")]);
        assert_eq!(p.feed(b"\ndata: b\n\n").unwrap(), vec![data("b")]);
    }

    #[test]
    fn empty_chunk_between_cr_and_lf() {
        let mut p = SseParser::default();
        let mut events = p.feed(b"data: a\r").unwrap();
        events.extend(p.feed(b"").unwrap());
        events.extend(p.feed(b"\ndata: b\n\n").unwrap());
        assert_eq!(events, vec![data("a\nb")]);
    }

    #[test]
    fn cr_then_non_lf_chunk() {
        let mut p = SseParser::default();
        let mut events = p.feed(b"data: a\r").unwrap();
        events.extend(p.feed(b"\rdata: b\n\n").unwrap());
        assert_eq!(events, vec![data("a"), data("b")]);
    }

    #[test]
    fn bom_is_stripped_once_even_when_split() {
        assert_eq!(parse(b"\xEF\xBB\xBFdata: x\n\n"), vec![data("x")]);
        let mut p = SseParser::default();
        assert!(p.feed(b"\xEF").unwrap().is_empty());
        assert!(p.feed(b"").unwrap().is_empty());
        assert!(p.feed(b"\xBB").unwrap().is_empty());
        let events = p.feed(b"\xBFdata: y\n\n\xEF\xBB\xBFdata: z\n\n").unwrap();
        // The second BOM is not at the start of the stream: it is part of a field name.
        assert_eq!(events, vec![data("y")]);
    }

    #[test]
    fn bom_like_prefix_that_is_not_a_bom_is_kept() {
        assert_eq!(parse(b"\xEFdata: x\n\ndata: y\n\n"), vec![data("y")]);
        let mut p = SseParser::default();
        assert!(p.feed(b"\xEF\xBB").unwrap().is_empty());
        // The held-back bytes start an unknown field (`\u{fffd}\u{fffd}`), not a BOM.
        assert_eq!(p.feed(b":x\ndata: y\n\n").unwrap(), vec![data("y")]);
        // A stream that is exactly a BOM prefix followed by data in one chunk.
        assert_eq!(parse(b"\xEF\xBB\ndata: z\n\n"), vec![data("z")]);
    }

    #[test]
    fn utf8_split_inside_a_character() {
        let text = "data: h\u{e9}llo \u{1f600}\n\n".as_bytes();
        for split in 0..text.len() {
            let mut p = SseParser::default();
            let mut events = p.feed(&text[..split]).unwrap();
            events.extend(p.feed(&text[split..]).unwrap());
            assert_eq!(
                events,
                vec![data("h\u{e9}llo \u{1f600}")],
                "split at {split}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(parse(b"data: a\xFFb\n\n"), vec![data("a\u{fffd}b")]);
        // A truncated sequence at the end of a line is invalid, not carried into the next line.
        assert_eq!(
            parse(b"data: a\xC3\ndata: b\n\n"),
            vec![data("a\u{fffd}\nb")]
        );
        assert_eq!(
            parse(b"event: \xFF\nid: \xFE\ndata: x\n\n"),
            vec![Event {
                event: Some("\u{fffd}".into()),
                id: Some("\u{fffd}".into()),
                ..data("x")
            }]
        );
    }

    #[test]
    fn line_cap_applies_to_split_lines() {
        let mut p = SseParser::new(8);
        assert!(p.feed(b"data: 12").is_ok(), "exactly at the limit is fine");
        assert_eq!(p.feed(b"3"), Err(SseError::LineTooLong { limit: 8 }));
        let mut p = SseParser::new(8);
        assert_eq!(
            p.feed(b"data: 123456789\n"),
            Err(SseError::LineTooLong { limit: 8 })
        );
        assert_eq!(
            SseError::LineTooLong { limit: 8 }.to_string(),
            "event-stream line longer than the limit of 8 bytes (`max_line_bytes`)"
        );
    }

    #[test]
    fn line_cap_does_not_count_terminators_or_the_bom() {
        let mut p = SseParser::new(7);
        assert_eq!(
            p.feed(b"\xEF\xBB\xBFdata: a\r\n\r\n").unwrap(),
            vec![data("a")]
        );
    }

    #[test]
    fn events_before_an_overlong_line_are_kept_by_feed_into() {
        let mut p = SseParser::new(10);
        let mut out = Vec::new();
        let err = p.feed_into(b"data: a\n\ndata: 0123456789\n\n", &mut out);
        assert_eq!(err, Err(SseError::LineTooLong { limit: 10 }));
        assert_eq!(out, vec![data("a")]);
    }

    #[test]
    fn finish_discards_an_unfinished_event_and_keeps_id_and_retry() {
        let mut p = SseParser::default();
        assert_eq!(
            p.feed(b"id: 1\nretry: 9\ndata: a\n\nid: 2\nevent: e\ndata: b\n")
                .unwrap(),
            vec![Event {
                retry: Some(9),
                ..with_id("a", "1")
            }]
        );
        assert_eq!(p.finish().unwrap(), vec![]);
        assert_eq!(p.last_event_id(), Some("1"), "id 2 was never dispatched");
        assert_eq!(p.retry(), Some(9));
        // The next stream starts clean: no leftover data, type or id buffer; a BOM is skipped.
        assert_eq!(p.feed(b"\xEF\xBB\xBFdata: c\n\n").unwrap(), vec![data("c")]);
        assert_eq!(p.last_event_id(), None);
    }

    #[test]
    fn finish_discards_a_partial_line_and_a_pending_cr() {
        let mut p = SseParser::default();
        p.feed(b"data: a\n\ndata: part").unwrap();
        assert_eq!(p.finish().unwrap(), vec![]);
        assert_eq!(p.feed(b"ial\n\n").unwrap(), vec![], "`ial` is a new field");
        let mut p = SseParser::default();
        p.feed(b"data: a\r").unwrap();
        p.finish().unwrap();
        assert_eq!(p.feed(b"\ndata: b\n\n").unwrap(), vec![data("b")]);
    }

    #[test]
    fn to_wire_is_canonical() {
        let event = Event {
            event: Some("delta".into()),
            data: "a\n\nb".into(),
            id: Some("42".into()),
            retry: Some(10),
        };
        assert_eq!(
            event.to_wire(),
            b"event: delta\nid: 42\nretry: 10\ndata: a\ndata: \ndata: b\n\n"
        );
        assert_eq!(parse(&event.to_wire()), vec![event]);
        assert_eq!(data("").to_wire(), b"data: \n\n");
        assert_eq!(parse(&data("").to_wire()), vec![data("")]);
    }

    #[test]
    fn to_wire_treats_every_line_ending_in_data_as_a_line_break() {
        let event = data("a\rb\r\nc\n\rd");
        assert_eq!(
            event.to_wire(),
            b"data: a\ndata: b\ndata: c\ndata: \ndata: d\n\n"
        );
        assert_eq!(parse(&event.to_wire()), vec![data("a\nb\nc\n\nd")]);
    }

    #[test]
    fn to_wire_omits_an_empty_event_type() {
        let event = Event {
            event: Some(String::new()),
            ..data("x")
        };
        assert_eq!(event.to_wire(), b"data: x\n\n");
    }

    #[test]
    fn validate_rejects_fields_that_would_break_framing() {
        let bad_type = Event {
            event: Some("a\nretry: 1".into()),
            ..data("x")
        };
        assert_eq!(
            bad_type.validate(),
            Err(SseError::LineBreakInField { field: "event" })
        );
        assert_eq!(
            with_id("x", "1\r2").validate(),
            Err(SseError::LineBreakInField { field: "id" })
        );
        assert_eq!(with_id("x", "1\u{0}2").validate(), Err(SseError::NulInId));
        assert_eq!(with_id("x\r\ny", "1").validate(), Ok(()));
    }

    #[test]
    fn format_u64_writes_decimal() {
        for n in [0, 7, 10, 1500, u64::MAX] {
            assert_eq!(format_u64(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    // -- properties ---------------------------------------------------------------------------

    fn text() -> impl Strategy<Value = String> {
        // Printable text, including multi-byte characters and a BOM, never a line break.
        proptest::string::string_regex("[a-zA-Z0-9 :{}\",\u{e9}\u{4e16}\u{1f600}\u{feff}]{0,12}")
            .unwrap()
    }

    fn line_ending() -> impl Strategy<Value = &'static [u8]> {
        prop_oneof![Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\r\n"[..])]
    }

    /// An arbitrary event stream: fields, comments, blank lines, stray bytes (invalid UTF-8,
    /// NUL, a BOM), mixed line endings, maybe a BOM at the start.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            4 => text().prop_map(|t| format!("data: {t}").into_bytes()),
            1 => text().prop_map(|t| format!("data:{t}").into_bytes()),
            1 => text().prop_map(|t| format!("event: {t}").into_bytes()),
            1 => text().prop_map(|t| format!("id: {t}").into_bytes()),
            1 => Just(b"id: a\0b".to_vec()),
            1 => (0u32..100_000).prop_map(|n| format!("retry: {n}").into_bytes()),
            1 => text().prop_map(|t| format!("retry: {t}").into_bytes()),
            1 => text().prop_map(|t| format!(": {t}").into_bytes()),
            1 => Just(b"data".to_vec()),
            1 => proptest::collection::vec(
                prop_oneof![Just(0xFFu8), Just(0xC3), Just(0xEF), Just(0xBB), Just(b':'), Just(0)],
                1..4,
            )
            .prop_map(|raw| [b"data: ".to_vec(), raw].concat()),
            3 => Just(Vec::new()),
        ];
        (
            any::<bool>(),
            proptest::collection::vec((line, line_ending()), 0..40),
        )
            .prop_map(|(bom, lines)| {
                let mut out = if bom { BOM.to_vec() } else { Vec::new() };
                for (line, end) in lines {
                    out.extend_from_slice(&line);
                    out.extend_from_slice(end);
                }
                out
            })
    }

    /// Feed `input` in pieces cut at `cuts`, collecting events until the first error.
    fn feed_split(
        parser: &mut SseParser,
        input: &[u8],
        cuts: &[prop::sample::Index],
    ) -> (Vec<Event>, Result<(), SseError>) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut events = Vec::new();
        let mut start = 0;
        for point in points.into_iter().chain(std::iter::once(input.len())) {
            if let Err(e) = parser.feed_into(&input[start..point], &mut events) {
                return (events, Err(e));
            }
            start = point;
        }
        (events, Ok(()))
    }

    /// A valid sequence of events for `to_wire`: single-line `event` and `id` without NUL,
    /// any `data` without CR (an LF is a line break), and an id that, once set, stays set
    /// (see `Event::write_wire`).
    fn valid_events() -> impl Strategy<Value = Vec<Event>> {
        let event = (
            proptest::option::of(text().prop_filter("non-empty", |t| !t.is_empty())),
            proptest::string::string_regex("[a-z \n\u{e9}\u{1f600}]{0,16}").unwrap(),
            proptest::option::of(text().prop_filter("non-empty", |t| !t.is_empty())),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(event, data, id, retry)| Event {
                event,
                data,
                id,
                retry,
            });
        proptest::collection::vec(event, 0..12).prop_map(|mut events| {
            let mut last: Option<String> = None;
            for event in &mut events {
                if event.id.is_none() {
                    event.id.clone_from(&last);
                }
                last.clone_from(&event.id);
            }
            events
        })
    }

    proptest! {
        #[test]
        fn split_anywhere_gives_the_same_events(
            input in stream(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = parse(&input);
            let (pieces, result) = feed_split(&mut SseParser::default(), &input, &cuts);
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(whole, pieces);
        }

        #[test]
        fn byte_at_a_time_gives_the_same_events(input in stream()) {
            let whole = parse(&input);
            let mut p = SseParser::default();
            let mut pieces = Vec::new();
            for byte in &input {
                pieces.extend(p.feed(std::slice::from_ref(byte)).unwrap());
            }
            prop_assert_eq!(whole, pieces);
        }

        #[test]
        fn line_cap_fails_the_same_way_however_the_input_is_split(
            input in stream(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = feed_split(&mut SseParser::new(12), &input, &[]);
            let pieces = feed_split(&mut SseParser::new(12), &input, &cuts);
            prop_assert_eq!(whole, pieces);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_split_consistently(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '), any::<u8>()],
                0..64,
            ),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = feed_split(&mut SseParser::default(), &input, &[]);
            prop_assert_eq!(whole, feed_split(&mut SseParser::default(), &input, &cuts));
        }

        #[test]
        fn wire_form_round_trips(events in valid_events()) {
            let mut wire = Vec::new();
            for event in &events {
                prop_assert_eq!(event.validate(), Ok(()));
                event.write_wire(&mut wire);
            }
            prop_assert_eq!(parse(&wire), events);
        }

        #[test]
        fn parsed_events_are_valid_and_stable_under_forwarding(input in stream()) {
            // Forwarding what we parsed and parsing it again changes nothing, except where
            // the stream cleared its id (see `Event::write_wire`).
            let events = parse(&input);
            let mut wire = Vec::new();
            for event in &events {
                prop_assert_eq!(event.validate(), Ok(()));
                event.write_wire(&mut wire);
            }
            let cleared = events.windows(2).any(|w| w[0].id.is_some() && w[1].id.is_none());
            if !cleared {
                prop_assert_eq!(parse(&wire), events);
            }
        }
    }
}
