//! An incremental decoder for the AWS event-stream encoding (`application/vnd.amazon.eventstream`),
//! the binary framing of Bedrock's `ConverseStream` (and Transcribe, S3 Select, Kinesis, ...).
//!
//! A message, all integers big-endian:
//!
//! ```text
//! total length (u32) | headers length (u32) | prelude CRC32 (u32, of the 8 bytes before it)
//! headers (headers length bytes) | payload | message CRC32 (u32, of every byte before it)
//! ```
//!
//! so a message is at least 16 bytes. Each header is `name length (u8, at least 1) | name
//! (UTF-8) | value type (u8) | value`, the value by type: 0 true and 1 false (no bytes),
//! 2 byte (i8), 3 short (i16), 4 integer (i32), 5 long (i64), 6 byte array and 7 string (u16
//! length, then the bytes; strings are UTF-8), 8 timestamp (i64 milliseconds since the epoch),
//! 9 UUID (16 bytes). The CRCs are CRC-32 (IEEE, as in gzip).
//!
//! [`Decoder::feed`] takes chunks split anywhere and returns the messages they complete. The
//! prelude is checked as soon as its 12 bytes are in, so a corrupt length is reported at once
//! instead of waiting for bytes that will never come; a message longer than the decoder's cap
//! is refused for the same reason. Any error means the stream cannot be trusted from there on:
//! the caller abandons it.

/// Length of the prelude: total length, headers length, prelude CRC.
pub const PRELUDE_LEN: usize = 12;
/// The smallest message: a prelude and a message CRC, with no headers and no payload.
pub const MIN_MESSAGE_LEN: usize = 16;
/// The default cap on one message (AWS documents 16 MiB as the largest event-stream message).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A header value, one variant per wire type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(Vec<u8>),
    String(String),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// One decoded message: its headers in wire order, and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Why a stream cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventStreamError {
    #[error(
        "prelude CRC mismatch: the message says {expected:#010x}, the bytes give {computed:#010x}"
    )]
    PreludeCrc { expected: u32, computed: u32 },
    #[error(
        "message CRC mismatch: the message says {expected:#010x}, the bytes give {computed:#010x}"
    )]
    MessageCrc { expected: u32, computed: u32 },
    #[error("a message of {total} bytes is shorter than the {MIN_MESSAGE_LEN}-byte minimum")]
    TooShort { total: u32 },
    #[error("a message of {total} bytes is over the decoder's limit of {limit} bytes")]
    TooLarge { total: u32, limit: usize },
    #[error("{headers} bytes of headers do not fit in a message of {total} bytes")]
    HeadersTooLong { headers: u32, total: u32 },
    #[error("header {index} is cut short by the end of the headers")]
    TruncatedHeader { index: usize },
    #[error("header {index} has an empty name")]
    EmptyHeaderName { index: usize },
    #[error("header {index}: the {what} is not UTF-8")]
    NotUtf8 { index: usize, what: &'static str },
    #[error("header {index} has unknown value type {code}")]
    UnknownHeaderType { index: usize, code: u8 },
}

/// The incremental decoder; one per stream.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max_message_bytes: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_BYTES)
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

impl Decoder {
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_message_bytes: max_message_bytes.max(MIN_MESSAGE_LEN),
        }
    }

    /// Bytes received but not yet part of a whole message. Non-zero at the end of a stream
    /// means the stream was cut inside a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Decode the messages `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Message>, EventStreamError> {
        let mut out = Vec::new();
        if self.buf.is_empty() {
            // The common case: decode straight from the chunk, keep only an unfinished tail.
            let used = self.decode_all(chunk, &mut out)?;
            self.buf.extend_from_slice(&chunk[used..]);
        } else {
            self.buf.extend_from_slice(chunk);
            let buf = std::mem::take(&mut self.buf);
            let result = self.decode_all(&buf, &mut out);
            self.buf = buf;
            let used = result?;
            self.buf.drain(..used);
        }
        Ok(out)
    }

    /// Decode whole messages from the start of `bytes`; return how many bytes they used.
    fn decode_all(&self, bytes: &[u8], out: &mut Vec<Message>) -> Result<usize, EventStreamError> {
        let mut at = 0;
        while bytes.len() - at >= PRELUDE_LEN {
            let total = self.check_prelude(&bytes[at..at + PRELUDE_LEN])?;
            if bytes.len() - at < total {
                break;
            }
            out.push(decode_message(&bytes[at..at + total])?);
            at += total;
        }
        Ok(at)
    }

    /// Validate a prelude; return the message's total length.
    fn check_prelude(&self, prelude: &[u8]) -> Result<usize, EventStreamError> {
        let expected = be_u32(&prelude[8..12]);
        let computed = crc32fast::hash(&prelude[..8]);
        if expected != computed {
            return Err(EventStreamError::PreludeCrc { expected, computed });
        }
        let total = be_u32(&prelude[0..4]);
        let headers = be_u32(&prelude[4..8]);
        if (total as usize) < MIN_MESSAGE_LEN {
            return Err(EventStreamError::TooShort { total });
        }
        if total as usize > self.max_message_bytes {
            return Err(EventStreamError::TooLarge {
                total,
                limit: self.max_message_bytes,
            });
        }
        if headers as usize > total as usize - MIN_MESSAGE_LEN {
            return Err(EventStreamError::HeadersTooLong { headers, total });
        }
        Ok(total as usize)
    }
}

/// Decode one whole message whose prelude is already checked.
fn decode_message(bytes: &[u8]) -> Result<Message, EventStreamError> {
    let end = bytes.len() - 4;
    let expected = be_u32(&bytes[end..]);
    let computed = crc32fast::hash(&bytes[..end]);
    if expected != computed {
        return Err(EventStreamError::MessageCrc { expected, computed });
    }
    let headers_len = be_u32(&bytes[4..8]) as usize;
    let headers = decode_headers(&bytes[PRELUDE_LEN..PRELUDE_LEN + headers_len])?;
    Ok(Message {
        headers,
        payload: bytes[PRELUDE_LEN + headers_len..end].to_vec(),
    })
}

fn decode_headers(mut bytes: &[u8]) -> Result<Vec<(String, HeaderValue)>, EventStreamError> {
    let mut headers = Vec::new();
    let mut index = 0;
    while !bytes.is_empty() {
        let truncated = EventStreamError::TruncatedHeader { index };
        let take = |bytes: &mut &[u8], n: usize| -> Result<Vec<u8>, EventStreamError> {
            if bytes.len() < n {
                return Err(EventStreamError::TruncatedHeader { index });
            }
            let (head, rest) = bytes.split_at(n);
            *bytes = rest;
            Ok(head.to_vec())
        };
        let name_len = *bytes.first().ok_or(truncated.clone())? as usize;
        bytes = &bytes[1..];
        if name_len == 0 {
            return Err(EventStreamError::EmptyHeaderName { index });
        }
        let name = String::from_utf8(take(&mut bytes, name_len)?).map_err(|_| {
            EventStreamError::NotUtf8 {
                index,
                what: "name",
            }
        })?;
        let code = *bytes.first().ok_or(truncated)?;
        bytes = &bytes[1..];
        let fixed = |bytes: &mut &[u8], n: usize| take(bytes, n);
        let value = match code {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes([fixed(&mut bytes, 1)?[0]])),
            3 => {
                let b = fixed(&mut bytes, 2)?;
                HeaderValue::Short(i16::from_be_bytes([b[0], b[1]]))
            }
            4 => {
                let b = fixed(&mut bytes, 4)?;
                HeaderValue::Int(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            }
            5 | 8 => {
                let b = fixed(&mut bytes, 8)?;
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&b);
                let v = i64::from_be_bytes(raw);
                if code == 5 {
                    HeaderValue::Long(v)
                } else {
                    HeaderValue::Timestamp(v)
                }
            }
            6 | 7 => {
                let b = fixed(&mut bytes, 2)?;
                let len = u16::from_be_bytes([b[0], b[1]]) as usize;
                let data = take(&mut bytes, len)?;
                if code == 6 {
                    HeaderValue::Bytes(data)
                } else {
                    HeaderValue::String(String::from_utf8(data).map_err(|_| {
                        EventStreamError::NotUtf8 {
                            index,
                            what: "string value",
                        }
                    })?)
                }
            }
            9 => {
                let mut raw = [0u8; 16];
                raw.copy_from_slice(&fixed(&mut bytes, 16)?);
                HeaderValue::Uuid(raw)
            }
            code => return Err(EventStreamError::UnknownHeaderType { index, code }),
        };
        headers.push((name, value));
        index += 1;
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn type_code(value: &HeaderValue) -> u8 {
        match value {
            HeaderValue::Bool(true) => 0,
            HeaderValue::Bool(false) => 1,
            HeaderValue::Byte(_) => 2,
            HeaderValue::Short(_) => 3,
            HeaderValue::Int(_) => 4,
            HeaderValue::Long(_) => 5,
            HeaderValue::Bytes(_) => 6,
            HeaderValue::String(_) => 7,
            HeaderValue::Timestamp(_) => 8,
            HeaderValue::Uuid(_) => 9,
        }
    }

    /// Encode one message (the gateway only decodes; tests need the other direction).
    fn encode(headers: &[(String, HeaderValue)], payload: &[u8]) -> Vec<u8> {
        let mut raw_headers = Vec::new();
        for (name, value) in headers {
            assert!(
                !name.is_empty() && name.len() <= 255,
                "header names are 1 to 255 bytes"
            );
            raw_headers.push(name.len() as u8);
            raw_headers.extend_from_slice(name.as_bytes());
            raw_headers.push(type_code(value));
            match value {
                HeaderValue::Bool(_) => {}
                HeaderValue::Byte(v) => raw_headers.extend_from_slice(&v.to_be_bytes()),
                HeaderValue::Short(v) => raw_headers.extend_from_slice(&v.to_be_bytes()),
                HeaderValue::Int(v) => raw_headers.extend_from_slice(&v.to_be_bytes()),
                HeaderValue::Long(v) | HeaderValue::Timestamp(v) => {
                    raw_headers.extend_from_slice(&v.to_be_bytes())
                }
                HeaderValue::Bytes(data) => {
                    let len =
                        u16::try_from(data.len()).expect("byte arrays are at most 65,535 bytes");
                    raw_headers.extend_from_slice(&len.to_be_bytes());
                    raw_headers.extend_from_slice(data);
                }
                HeaderValue::String(text) => {
                    let len = u16::try_from(text.len()).expect("strings are at most 65,535 bytes");
                    raw_headers.extend_from_slice(&len.to_be_bytes());
                    raw_headers.extend_from_slice(text.as_bytes());
                }
                HeaderValue::Uuid(raw) => raw_headers.extend_from_slice(raw),
            }
        }
        let total = (MIN_MESSAGE_LEN + raw_headers.len() + payload.len()) as u32;
        let mut out = Vec::with_capacity(total as usize);
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&(raw_headers.len() as u32).to_be_bytes());
        let prelude_crc = crc32fast::hash(&out);
        out.extend_from_slice(&prelude_crc.to_be_bytes());
        out.extend_from_slice(&raw_headers);
        out.extend_from_slice(payload);
        let message_crc = crc32fast::hash(&out);
        out.extend_from_slice(&message_crc.to_be_bytes());
        out
    }

    fn header(name: &str, value: HeaderValue) -> (String, HeaderValue) {
        (name.to_owned(), value)
    }

    fn all_types() -> Vec<(String, HeaderValue)> {
        vec![
            header("t", HeaderValue::Bool(true)),
            header("f", HeaderValue::Bool(false)),
            header("byte", HeaderValue::Byte(-7)),
            header("short", HeaderValue::Short(-300)),
            header("int", HeaderValue::Int(70_000)),
            header("long", HeaderValue::Long(-5_000_000_000)),
            header("bytes", HeaderValue::Bytes(vec![0, 255, 1])),
            header(
                ":event-type",
                HeaderValue::String("contentBlockDelta".into()),
            ),
            header("when", HeaderValue::Timestamp(1_700_000_000_123)),
            header("id", HeaderValue::Uuid(*b"0123456789abcdef")),
        ]
    }

    #[test]
    fn published_example_without_headers() {
        // From the AWS event-stream encoding documentation's worked example (payload only).
        let bytes = [
            0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138, 123, 34, 102, 111, 111, 34, 58, 32, 34,
            98, 97, 114, 34, 125, 174, 114, 88, 228,
        ];
        let messages = Decoder::default().feed(&bytes).unwrap();
        assert_eq!(
            messages,
            vec![Message {
                headers: vec![],
                payload: br#"{"foo": "bar"}"#.to_vec()
            }]
        );
        assert_eq!(encode(&[], br#"{"foo": "bar"}"#), bytes);
    }

    #[test]
    fn published_example_with_a_string_header() {
        let bytes: Vec<u8> = vec![
            0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12, 99, 111, 110, 116, 101, 110, 116, 45,
            116, 121, 112, 101, 7, 0, 16, 97, 112, 112, 108, 105, 99, 97, 116, 105, 111, 110, 47,
            106, 115, 111, 110, 123, 34, 102, 111, 111, 34, 58, 32, 34, 98, 97, 114, 34, 125, 111,
            162, 191, 59,
        ];
        let messages = Decoder::default().feed(&bytes).unwrap();
        assert_eq!(
            messages[0].header("content-type"),
            Some(&HeaderValue::String("application/json".into()))
        );
        assert_eq!(messages[0].payload, br#"{"foo": "bar"}"#);
    }

    #[test]
    fn every_header_type_round_trips() {
        let encoded = encode(&all_types(), b"payload");
        let messages = Decoder::default().feed(&encoded).unwrap();
        assert_eq!(messages[0].headers, all_types());
        assert_eq!(messages[0].payload, b"payload");
    }

    #[test]
    fn split_byte_by_byte() {
        let mut stream = encode(&all_types(), b"one");
        stream.extend(encode(&[], b""));
        stream.extend(encode(&[header("k", HeaderValue::Int(1))], b"three"));
        let mut decoder = Decoder::default();
        let mut messages = Vec::new();
        for byte in &stream {
            messages.extend(decoder.feed(std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[2].payload, b"three");
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn an_unfinished_message_stays_buffered() {
        let encoded = encode(&[], b"abcdef");
        let mut decoder = Decoder::default();
        assert!(decoder
            .feed(&encoded[..encoded.len() - 1])
            .unwrap()
            .is_empty());
        assert_eq!(decoder.buffered(), encoded.len() - 1);
        assert_eq!(
            decoder.feed(&encoded[encoded.len() - 1..]).unwrap().len(),
            1
        );
    }

    #[test]
    fn a_corrupt_payload_is_a_message_crc_error() {
        let mut encoded = encode(&[header("a", HeaderValue::Bool(true))], b"payload");
        let n = encoded.len();
        encoded[n - 6] ^= 1;
        assert!(matches!(
            Decoder::default().feed(&encoded),
            Err(EventStreamError::MessageCrc { .. })
        ));
    }

    #[test]
    fn a_corrupt_length_fails_at_the_prelude_without_waiting() {
        let mut encoded = encode(&[], b"payload");
        encoded[2] = 0x7f; // total length now claims megabytes
        let mut decoder = Decoder::default();
        assert!(matches!(
            decoder.feed(&encoded[..PRELUDE_LEN]),
            Err(EventStreamError::PreludeCrc { .. })
        ));
    }

    fn with_prelude(total: u32, headers: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&headers.to_be_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn lengths_are_checked() {
        assert_eq!(
            Decoder::default().feed(&with_prelude(15, 0)),
            Err(EventStreamError::TooShort { total: 15 })
        );
        assert_eq!(
            Decoder::default().feed(&with_prelude(30, 15)),
            Err(EventStreamError::HeadersTooLong {
                headers: 15,
                total: 30
            })
        );
        assert_eq!(
            Decoder::new(1024).feed(&with_prelude(4096, 0)),
            Err(EventStreamError::TooLarge {
                total: 4096,
                limit: 1024
            })
        );
    }

    /// A message whose headers section is `raw` (valid CRCs), to test header errors.
    fn with_raw_headers(raw: &[u8]) -> Vec<u8> {
        let mut out = with_prelude((MIN_MESSAGE_LEN + raw.len()) as u32, raw.len() as u32);
        out.extend_from_slice(raw);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn header_errors() {
        let cases: Vec<(Vec<u8>, EventStreamError)> = vec![
            (
                vec![1, b'a', 42],
                EventStreamError::UnknownHeaderType { index: 0, code: 42 },
            ),
            (vec![0, 0], EventStreamError::EmptyHeaderName { index: 0 }),
            (
                vec![1, b'a', 4, 0, 0],
                EventStreamError::TruncatedHeader { index: 0 },
            ),
            (
                vec![1, b'a', 0, 5, b'b'],
                EventStreamError::TruncatedHeader { index: 1 },
            ),
            (
                vec![1, b'a', 7, 0, 9, b'x'],
                EventStreamError::TruncatedHeader { index: 0 },
            ),
            (
                vec![1, 0xff, 0],
                EventStreamError::NotUtf8 {
                    index: 0,
                    what: "name",
                },
            ),
            (
                vec![1, b'a', 7, 0, 1, 0xff],
                EventStreamError::NotUtf8 {
                    index: 0,
                    what: "string value",
                },
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                Decoder::default().feed(&with_raw_headers(&raw)),
                Err(expected),
                "{raw:?}"
            );
        }
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            any::<bool>().prop_map(HeaderValue::Bool),
            any::<i8>().prop_map(HeaderValue::Byte),
            any::<i16>().prop_map(HeaderValue::Short),
            any::<i32>().prop_map(HeaderValue::Int),
            any::<i64>().prop_map(HeaderValue::Long),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(HeaderValue::Bytes),
            ".{0,20}".prop_map(HeaderValue::String),
            any::<i64>().prop_map(HeaderValue::Timestamp),
            any::<[u8; 16]>().prop_map(HeaderValue::Uuid),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            proptest::collection::vec(("[a-z:-]{1,12}", header_value()), 0..6),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(headers, payload)| Message { headers, payload })
    }

    proptest! {
        #[test]
        fn whole_and_split_decode_the_same(
            messages in proptest::collection::vec(message(), 1..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let stream: Vec<u8> = messages.iter().flat_map(|m| encode(&m.headers, &m.payload)).collect();
            let whole = Decoder::default().feed(&stream).unwrap();
            prop_assert_eq!(&whole, &messages);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let mut decoder = Decoder::default();
            let mut split = Vec::new();
            let mut from = 0;
            for point in points.into_iter().chain([stream.len()]) {
                split.extend(decoder.feed(&stream[from..point]).unwrap());
                from = point;
            }
            prop_assert_eq!(split, whole);
            prop_assert_eq!(decoder.buffered(), 0);
        }

        #[test]
        fn any_flipped_bit_is_an_error(m in message(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut encoded = encode(&m.headers, &m.payload);
            let i = at.index(encoded.len());
            encoded[i] ^= 1 << bit;
            prop_assert!(Decoder::default().feed(&encoded).is_err());
        }
    }
}
