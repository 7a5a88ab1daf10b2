//! The OpenAI chat-completions stream as the gateway relays it: the per-event work of a
//! streamed `/v1/chat/completions` response, done once per network chunk instead of once per
//! event in Python.
//!
//! For each chunk of upstream bytes, [`OpenAIChatStream::feed`] parses the events it completes
//! (with [`SseParser`], borrowed, no allocation per event) and returns the bytes to send to the
//! client, in canonical SSE form:
//!
//! - `data: [DONE]` is forwarded and marks the stream complete ([`OpenAIChatStream::done`]).
//!   A stream that ends without it was cut short.
//! - An event whose data has a `"usage"` member holding an object is read as JSON; the last
//!   such object is kept as the stream's usage ([`OpenAIChatStream::usage_json`]), verbatim.
//!   An event that looks like it carries usage but is not JSON is an error
//!   ([`ChatStreamError::NotJson`]): the gateway cannot account for that stream.
//! - **Removing what the gateway added.** The gateway always asks upstream for
//!   `stream_options.include_usage`, to measure the request. When the client did not ask for
//!   it (`strip_usage`), what that option adds is removed before the client sees it: the
//!   final usage-only chunk (usage and no choices), and the `,"usage":null` member OpenAI adds
//!   to every other chunk. The removal is a byte replacement of `,"usage":null`: that sequence
//!   cannot occur inside a JSON string (a quote there is always escaped), so only the member
//!   itself matches.
//! - Every other event is forwarded unchanged.
//!
//! **Output text, counted lazily.** The bytes forwarded are kept, unread (written once, as
//! they are produced), until [`OpenAIChatStream::take_output_text`] parses them again: the
//! text the model produced (content, refusal, reasoning, and tool-call names and arguments,
//! in order) for counting output
//! tokens when the provider reports no usage (a broken stream, a client that left, a server
//! that ignores `include_usage`). A stream whose usage arrives is never read twice, and a
//! caller that needs a running count (a live budget) reads the new part as it goes. Chunks
//! that are not JSON are skipped and counted ([`OpenAIChatStream::unreadable_events`]). The
//! kept bytes are capped (`max_pending_bytes`); past the cap, the output of further `feed`s is
//! dropped and counted ([`OpenAIChatStream::dropped_text_bytes`]), so a count from it is a
//! lower bound.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem;
use serde::Deserialize;

use crate::sse::{EventRef, SseError, SseParser};

const DONE: &str = "[DONE]";
const USAGE_NULL: &[u8] = b",\"usage\":null";

/// By default keep at most this much unread chunk data per stream (far above any real answer).
pub const DEFAULT_MAX_PENDING_BYTES: usize = 64 << 20;

/// Room reserved for the forwarded bytes at a stream's first chunk (a few events; the buffer
/// grows from there). Small, as a gateway holds thousands of streams open at once: 16 KiB each
/// was 16 MiB for a thousand streams that had sent a few hundred bytes.
const INITIAL_PENDING_BYTES: usize = 2 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatStreamError {
    #[error(transparent)]
    Sse(#[from] SseError),
    /// An event that carries usage (or claims to) is not a JSON object.
    #[error("an event of the stream is not JSON: {reason}")]
    NotJson { reason: String },
}

#[derive(Debug)]
pub struct OpenAIChatStream {
    parser: SseParser,
    strip_usage: bool,
    max_pending: usize,
    done: bool,
    usage: Option<String>,
    events: u64,
    /// Bytes forwarded and not yet read for output text: whole events in canonical SSE form.
    /// Each `feed` writes the client's bytes at its end and returns them from there, so they
    /// are kept without a second copy.
    pending: Vec<u8>,
    /// The last `feed` took `pending` past its cap: cut it back to this length (what it was
    /// before that feed) once the caller is done with the returned bytes.
    trim_to: Option<usize>,
    unreadable: u64,
    dropped: u64,
    /// The first error seen, sticky: a stream that failed once is not trusted again.
    failed: Option<ChatStreamError>,
}

impl OpenAIChatStream {
    pub fn new(strip_usage: bool, max_line_bytes: usize, max_pending_bytes: usize) -> Self {
        Self {
            parser: SseParser::new(max_line_bytes),
            strip_usage,
            max_pending: max_pending_bytes,
            done: false,
            usage: None,
            events: 0,
            pending: Vec::new(),
            trim_to: None,
            unreadable: 0,
            dropped: 0,
            failed: None,
        }
    }

    /// Parse one chunk of upstream bytes; return the bytes to forward to the client (empty when
    /// the chunk completed no event). On error, nothing of this chunk is forwarded and every
    /// later call fails with the same error.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<&[u8], ChatStreamError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        self.trim();
        let start = self.pending.len();
        // Room for this chunk at once: what is forwarded is never much more than it. The first
        // chunk reserves room for a short answer's whole stream, which then never reallocates
        // (growing from one chunk's size copied as many bytes again as the stream had).
        let wanted = chunk.len() + 64;
        if self.pending.capacity() == 0 {
            self.pending.reserve(wanted.max(INITIAL_PENDING_BYTES));
        } else {
            self.pending.reserve(wanted);
        }
        let mut state = Relay {
            strip_usage: self.strip_usage,
            out: &mut self.pending,
            done: &mut self.done,
            usage: &mut self.usage,
            events: &mut self.events,
            error: None,
        };
        let parsed = self
            .parser
            .feed_with(chunk, &mut |event| state.event(event));
        let error = match (parsed, state.error) {
            (Err(err), _) => Some(ChatStreamError::from(err)),
            (Ok(()), Some(err)) => Some(err),
            (Ok(()), None) => None,
        };
        if let Some(err) = error {
            self.pending.truncate(start);
            self.failed = Some(err.clone());
            return Err(err);
        }
        if self.pending.len() > self.max_pending {
            self.dropped += (self.pending.len() - start) as u64;
            self.trim_to = Some(start);
        }
        Ok(&self.pending[start..])
    }

    /// Drop the output of a `feed` that went past the cap on unread bytes.
    fn trim(&mut self) {
        if let Some(len) = self.trim_to.take() {
            self.pending.truncate(len);
        }
    }

    /// `data: [DONE]` arrived: the stream is complete.
    pub fn done(&self) -> bool {
        self.done
    }

    /// The last `usage` object the stream carried, as JSON text.
    pub fn usage_json(&self) -> Option<&str> {
        self.usage.as_deref()
    }

    /// Events parsed so far (`[DONE]` included).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Chunks skipped by [`OpenAIChatStream::take_output_text`] because they were not JSON.
    pub fn unreadable_events(&self) -> u64 {
        self.unreadable
    }

    /// Bytes of output not kept for [`OpenAIChatStream::take_output_text`] because the unread
    /// bytes reached their cap.
    pub fn dropped_text_bytes(&self) -> u64 {
        self.dropped
    }

    /// Bytes forwarded and not yet read by [`OpenAIChatStream::take_output_text`] (a caller
    /// keeping memory bounded reads the text out once this grows).
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// The output text of the chunks forwarded since the last call, appended to `text`.
    pub fn take_output_text(&mut self, text: &mut String) {
        self.trim();
        // What was forwarded is whole events that passed the parser once (no line is longer
        // than one the stream's parser accepted, or the stream failed).
        let mut parser = SseParser::new(usize::MAX);
        let unreadable = &mut self.unreadable;
        let parsed = parser.feed_with(&self.pending, &mut |event| {
            if event.data == DONE {
                return;
            }
            match serde_json::from_str::<Chunk<'_>>(event.data) {
                Ok(chunk) => chunk.push_text(text),
                Err(_) => *unreadable += 1,
            }
        });
        debug_assert!(parsed.is_ok(), "the relay's own output parses");
        // Reuse the allocation for what comes next.
        self.pending.clear();
    }
}

/// The per-event work of one `feed`, over borrowed state (the parser is borrowed separately).
struct Relay<'s> {
    strip_usage: bool,
    out: &'s mut Vec<u8>,
    done: &'s mut bool,
    usage: &'s mut Option<String>,
    events: &'s mut u64,
    error: Option<ChatStreamError>,
}

impl Relay<'_> {
    fn event(&mut self, event: EventRef<'_>) {
        if self.error.is_some() {
            return;
        }
        *self.events += 1;
        let data = event.data;
        if data == DONE {
            *self.done = true;
            event.write_wire(self.out);
            return;
        }
        let bytes = data.as_bytes();
        let members = usage_members(bytes);
        if members.object {
            match serde_json::from_str::<UsageProbe<'_>>(data) {
                Ok(probe) => {
                    if let Some(usage) = probe.usage.filter(|u| u.get().starts_with('{')) {
                        *self.usage = Some(usage.get().to_owned());
                        if self.strip_usage && probe.choices.map_or(true, |c| c.is_empty()) {
                            return; // the usage-only chunk the client did not ask for
                        }
                    }
                }
                Err(err) => {
                    self.error = Some(ChatStreamError::NotJson {
                        reason: err.to_string(),
                    });
                    return;
                }
            }
        }
        let Some(first) = members.first_null.filter(|_| self.strip_usage) else {
            event.write_wire(self.out);
            return;
        };
        let plain = event.single_line
            && event.event.is_none()
            && event.id.is_none()
            && event.retry.is_none();
        if plain {
            // The common case (every chunk of a stream the gateway asked usage for), written
            // without an intermediate copy.
            self.out.extend_from_slice(b"data: ");
            self.out.extend_from_slice(&bytes[..first]);
            let mut rest = &bytes[first + USAGE_NULL.len()..];
            if members.more_nulls {
                while let Some(i) = find_usage_null(rest) {
                    self.out.extend_from_slice(&rest[..i]);
                    rest = &rest[i + USAGE_NULL.len()..];
                }
            }
            self.out.extend_from_slice(rest);
            self.out.extend_from_slice(b"\n\n");
        } else {
            let data = data.replace(",\"usage\":null", "");
            EventRef {
                data: &data,
                ..event
            }
            .write_wire(self.out);
        }
    }
}

// The needles start past the quote: memchr's prefilter looks for the needle's rarest bytes,
// and it ranks `"` as rare, which in JSON it is not (every quote would be a false candidate).
static USAGE_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"usage\""));
static USAGE_NULL_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"usage\":null"));

/// What one scan for `"usage"` members found.
#[derive(Debug, Default, PartialEq, Eq)]
struct UsageMembers {
    /// One may hold an object (then the chunk is read as JSON to be sure: the scan cannot
    /// tell a key from text inside a string, the parse can).
    object: bool,
    /// Where the first `,"usage":null` starts (the member the gateway's `include_usage` adds).
    first_null: Option<usize>,
    /// Another `,"usage":null` follows the first.
    more_nulls: bool,
}

/// `,"usage":null` where OpenAI puts it, closing the chunk (on every chunk of a stream the
/// gateway asked usage for).
const USAGE_NULL_LAST: &[u8] = b",\"usage\":null}";

fn usage_members(bytes: &[u8]) -> UsageMembers {
    // The common case in one search instead of two: the chunk closes with the member, and no
    // other `usage"` comes before it. (No match of the needle can start before the member and
    // end inside it: the member starts with `,`, which the needle does not hold.)
    if let Some(body) = bytes.strip_suffix(USAGE_NULL_LAST) {
        if USAGE_FINDER.find(body).is_none() {
            return UsageMembers {
                object: false,
                first_null: Some(body.len()),
                more_nulls: false,
            };
        }
    }
    scan_usage_members(bytes)
}

/// Every `"usage"` member of `bytes`, by one scan.
fn scan_usage_members(bytes: &[u8]) -> UsageMembers {
    let mut found = UsageMembers::default();
    for at in USAGE_FINDER.find_iter(bytes) {
        if at == 0 || bytes[at - 1] != b'"' {
            continue;
        }
        let after = &bytes[at + b"usage\"".len()..];
        let value = after
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))
            .map_or(&b""[..], |i| &after[i..]);
        if value.starts_with(b"null") {
            if at > 1 && bytes[at - 2] == b',' && after.starts_with(b":null") {
                if found.first_null.is_none() {
                    found.first_null = Some(at - 2);
                } else {
                    found.more_nulls = true;
                }
            }
        } else {
            found.object = true;
        }
    }
    found
}

/// Where the next `,"usage":null` starts in `bytes`.
fn find_usage_null(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = USAGE_NULL_FINDER.find(&bytes[from..]) {
        let at = from + i;
        if at >= 2 && &bytes[at - 2..at] == b",\"" {
            return Some(at - 2);
        }
        from = at + 1;
    }
    None
}

/// Just enough of a chunk to find its usage and whether it has choices.
#[derive(Deserialize)]
struct UsageProbe<'a> {
    #[serde(default, borrow)]
    usage: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// Just enough of a chunk to read the text the model produced.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    /// DeepSeek, vLLM and others stream reasoning beside the content.
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

impl Chunk<'_> {
    fn push_text(&self, text: &mut String) {
        for delta in self.choices.iter().filter_map(|c| c.delta.as_ref()) {
            let parts = [
                &delta.reasoning_content,
                &delta.reasoning,
                &delta.content,
                &delta.refusal,
            ];
            for part in parts.into_iter().flatten() {
                text.push_str(part);
            }
            for call in delta.tool_calls.iter().flatten() {
                if let Some(function) = &call.function {
                    for part in [&function.name, &function.arguments].into_iter().flatten() {
                        text.push_str(part);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::DEFAULT_MAX_LINE_BYTES;
    use proptest::prelude::*;

    fn stream(strip: bool) -> OpenAIChatStream {
        OpenAIChatStream::new(strip, DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_PENDING_BYTES)
    }

    fn chunk(content: &str) -> String {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}],\"usage\":null}}\n\n",
            serde_json::to_string(content).unwrap()
        )
    }

    const USAGE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n";

    fn whole(parts: &[&str]) -> String {
        parts.concat()
    }

    fn relay(s: &mut OpenAIChatStream, input: &[u8], split: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = 0;
        for &point in split.iter().chain(std::iter::once(&input.len())) {
            let point = point.clamp(start, input.len());
            out.extend_from_slice(s.feed(&input[start..point]).unwrap());
            start = point;
        }
        out
    }

    #[test]
    fn strips_what_the_gateway_added() {
        let input = whole(&[&chunk("Hel"), &chunk("lo"), USAGE, "data: [DONE]\n\n"]);
        let mut s = stream(true);
        let out = String::from_utf8(relay(&mut s, input.as_bytes(), &[])).unwrap();
        assert!(!out.contains("usage"), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert_eq!(out.matches("data: ").count(), 3);
        assert!(s.done());
        assert_eq!(
            s.usage_json(),
            Some("{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}")
        );
        let mut text = String::new();
        s.take_output_text(&mut text);
        assert_eq!(text, "Hello");
    }

    #[test]
    fn forwards_everything_when_the_client_asked_for_usage() {
        let input = whole(&[&chunk("Hi"), USAGE, "data: [DONE]\n\n"]);
        let mut s = stream(false);
        let out = relay(&mut s, input.as_bytes(), &[]);
        assert_eq!(String::from_utf8(out).unwrap(), input);
        assert!(s.usage_json().is_some());
    }

    #[test]
    fn usage_inside_a_content_chunk_is_captured_and_forwarded() {
        let input = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
        let mut s = stream(true);
        let out = relay(&mut s, input.as_bytes(), &[]);
        assert_eq!(out, input.as_bytes());
        assert!(s.usage_json().is_some());
    }

    #[test]
    fn missing_done_is_visible() {
        let mut s = stream(true);
        relay(&mut s, chunk("cut").as_bytes(), &[]);
        assert!(!s.done());
        assert_eq!(s.usage_json(), None);
    }

    #[test]
    fn usage_that_is_not_json_fails_the_stream() {
        let mut s = stream(true);
        let err = s
            .feed(b"data: {\"usage\":{\"prompt_tokens\": oops}\n\n")
            .unwrap_err();
        assert!(matches!(err, ChatStreamError::NotJson { .. }));
        // Sticky: nothing more is relayed.
        assert!(s.feed(b"data: [DONE]\n\n").is_err());
    }

    #[test]
    fn a_string_mentioning_usage_is_not_a_usage_member() {
        let input = "data: {\"choices\":[{\"delta\":{\"content\":\"the \\\"usage\\\":null key\"}}],\"usage\":null}\n\n";
        let mut s = stream(true);
        let out = String::from_utf8(relay(&mut s, input.as_bytes(), &[])).unwrap();
        assert_eq!(
            out,
            "data: {\"choices\":[{\"delta\":{\"content\":\"the \\\"usage\\\":null key\"}}]}\n\n"
        );
        let mut text = String::new();
        s.take_output_text(&mut text);
        assert_eq!(text, "the \"usage\":null key");
    }

    #[test]
    fn output_text_includes_reasoning_refusals_and_tool_calls() {
        let input = concat!(
            "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"think \"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"refusal\":\"no\"}}]}\n\n",
            "data: not json\n\n",
        );
        let mut s = stream(false);
        relay(&mut s, input.as_bytes(), &[]);
        let mut text = String::new();
        s.take_output_text(&mut text);
        assert_eq!(text, "think get_weather{\"city\":\"Paris\"}no");
        assert_eq!(s.unreadable_events(), 1);
        // Read once: a second call adds nothing.
        s.take_output_text(&mut text);
        assert_eq!(text, "think get_weather{\"city\":\"Paris\"}no");
    }

    #[test]
    fn pending_text_is_capped() {
        let mut s = OpenAIChatStream::new(false, DEFAULT_MAX_LINE_BYTES, 200);
        let first = chunk("aaaa");
        let input = whole(&[&first, &chunk("bbbb"), &chunk("cccc")]);
        // One event per network read: the first fits under the cap, the others do not.
        relay(&mut s, input.as_bytes(), &[first.len(), 2 * first.len()]);
        assert_eq!(s.dropped_text_bytes(), 2 * first.len() as u64);
        let mut text = String::new();
        s.take_output_text(&mut text);
        assert_eq!(text, "aaaa");
    }

    #[test]
    fn multi_line_data_with_usage_null_is_rewritten_safely() {
        let input = "data: {\"choices\":[],\ndata: \"x\":1,\"usage\":null}\n\n";
        let mut s = stream(true);
        let out = String::from_utf8(relay(&mut s, input.as_bytes(), &[])).unwrap();
        assert_eq!(out, "data: {\"choices\":[],\ndata: \"x\":1}\n\n");
    }

    #[test]
    fn events_with_fields_keep_them() {
        let input = "event: delta\nid: 7\ndata: {\"choices\":[],\"usage\":null}\n\n";
        let mut s = stream(true);
        let out = String::from_utf8(relay(&mut s, input.as_bytes(), &[])).unwrap();
        assert_eq!(out, "event: delta\nid: 7\ndata: {\"choices\":[]}\n\n");
    }

    #[test]
    fn the_closing_member_shortcut_finds_what_the_scan_finds() {
        for data in [
            r#"{"choices":[{"delta":{"content":"hi"}}],"usage":null}"#,
            r#"{"usage":null,"choices":[],"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1},"usage":null}"#,
            r#"{"choices":[{"delta":{"content":"\"usage\": 3"}}],"usage":null}"#,
            r#"{"x":"usage\"","usage":null}"#,
            r#","usage":null}"#,
            r#"{"choices":[],"usage":null }"#,
            r#"{"choices":[],"usage":{}}"#,
        ] {
            let bytes = data.as_bytes();
            assert_eq!(usage_members(bytes), scan_usage_members(bytes), "{data}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The shortcut for chunks that close with `,"usage":null` answers as the full scan.
        #[test]
        fn usage_members_match_the_full_scan(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(r#""usage""#), Just(":"), Just("null"), Just(","), Just("{"), Just("}"),
                    Just(r#"\""#), Just("usage"), Just(" "), Just("x"), Just(r#","usage":null}"#),
                ],
                0..12,
            ),
        ) {
            let data = parts.concat();
            prop_assert_eq!(usage_members(data.as_bytes()), scan_usage_members(data.as_bytes()));
        }

        /// Relaying is independent of where the network splits the stream.
        #[test]
        fn relay_is_independent_of_chunking(
            texts in proptest::collection::vec("[a-z \\u{e9}\\u{1F600}\"]{0,12}", 1..8),
            splits in proptest::collection::vec(0usize..2000, 0..12),
            strip in any::<bool>(),
        ) {
            let mut parts: Vec<String> = texts.iter().map(|t| chunk(t)).collect();
            parts.push(USAGE.to_owned());
            parts.push("data: [DONE]\n\n".to_owned());
            let input = parts.concat();
            let mut splits = splits;
            splits.sort_unstable();
            let mut whole_stream = stream(strip);
            let mut split_stream = stream(strip);
            let expected = relay(&mut whole_stream, input.as_bytes(), &[]);
            prop_assert_eq!(relay(&mut split_stream, input.as_bytes(), &splits), expected);
            let (mut a, mut b) = (String::new(), String::new());
            whole_stream.take_output_text(&mut a);
            split_stream.take_output_text(&mut b);
            prop_assert_eq!(&a, &texts.concat());
            prop_assert_eq!(a, b);
            prop_assert!(split_stream.done());
            prop_assert!(split_stream.usage_json().is_some());
        }
    }
}
