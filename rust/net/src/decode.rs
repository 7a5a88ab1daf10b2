//! Response bodies as the provider encoded them (`Content-Encoding`) -> their bytes, with two
//! bounds a hostile or broken provider cannot get past: the decoded size (`max_body_bytes`, for
//! an answer read whole) and the expansion ratio (`max_decompressed_ratio`, decoded bytes per
//! encoded byte, checked once past [`RATIO_FLOOR`] of output).
//!
//! Decoding never produces more than [`STEP`] bytes before the bounds are checked again, so a
//! bomb (a megabyte of gzip expanding to a gigabyte) costs at most one step past the bound.
//! The decoders are `compression-codecs`' push decoders (brotli's large-window format refused,
//! zstd's window capped at 8 MiB as RFC 9659 allows).
//!
//! The gateway asks providers for `identity`; a provider that compresses anyway is decoded:
//! `gzip` (and `x-gzip`), `deflate` (zlib format, RFC 9110), `br`, `zstd`. Anything else,
//! including several codings stacked, is a `bad_response`.

use bytes::Bytes;
use compression_codecs::core::util::{PartialBuffer, WriteBuffer};
use compression_codecs::zstd::params::DParameter;
use compression_codecs::{BrotliDecoder, DecodeV2, GzipDecoder, ZlibDecoder, ZstdDecoder};

use crate::error::NetError;

/// The most output produced between two checks of the bounds.
pub const STEP: usize = 32 * 1024;
/// The ratio is checked only past this much output: small answers may compress very well.
pub const RATIO_FLOOR: u64 = 1 << 20;
/// zstd's window (RFC 9659: at most 8 MiB for the HTTP content coding).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// The most decoded bytes (`None`: unbounded, for streams, whose memory backpressure bounds).
    pub max_output: Option<u64>,
    /// The most decoded bytes per encoded byte, past [`RATIO_FLOOR`].
    pub max_ratio: u64,
}

pub struct BodyDecoder {
    codec: Option<(&'static str, Box<dyn DecodeV2 + Send>)>,
    scratch: Box<[u8]>,
    input: u64,
    output: u64,
    limits: DecodeLimits,
    ended: bool,
}

impl BodyDecoder {
    /// The decoder for a `Content-Encoding` header value (`None`: not encoded).
    pub fn new(content_encoding: Option<&str>, limits: DecodeLimits) -> Result<Self, NetError> {
        let codec: Option<(&'static str, Box<dyn DecodeV2 + Send>)> = match content_encoding
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("" | "identity") => None,
            Some("gzip" | "x-gzip") => Some(("gzip", Box::new(GzipDecoder::new()))),
            Some("deflate") => Some(("deflate", Box::new(ZlibDecoder::new()))),
            Some("br") => Some(("br", Box::new(BrotliDecoder::new()))),
            Some("zstd") => Some((
                "zstd",
                Box::new(ZstdDecoder::new_with_params(&[DParameter::window_log_max(
                    ZSTD_WINDOW_LOG_MAX,
                )])),
            )),
            Some(other) => return Err(NetError::UnknownEncoding(other.chars().take(64).collect())),
        };
        let scratch = if codec.is_some() {
            vec![0; STEP].into_boxed_slice()
        } else {
            Box::default()
        };
        Ok(BodyDecoder {
            codec,
            scratch,
            input: 0,
            output: 0,
            limits,
            ended: false,
        })
    }

    /// Decoded bytes so far.
    pub fn output(&self) -> u64 {
        self.output
    }

    /// Decode one chunk of the body. Unencoded chunks pass through without a copy.
    pub fn feed(&mut self, chunk: Bytes) -> Result<Bytes, NetError> {
        self.input += chunk.len() as u64;
        let Some((encoding, codec)) = &mut self.codec else {
            self.output += chunk.len() as u64;
            self.check_size()?;
            return Ok(chunk);
        };
        let encoding = *encoding;
        let mut out = Vec::new();
        let mut input = PartialBuffer::new(&chunk[..]);
        loop {
            if self.ended {
                if input.unwritten().is_empty() {
                    break;
                }
                if !matches!(encoding, "gzip" | "zstd") {
                    return Err(NetError::CorruptEncoding {
                        encoding,
                        reason: "data after the end of the encoded body".into(),
                    });
                }
                // A second gzip member (RFC 1952 2.2) or zstd frame (RFC 8878 3) is part of the body.
                codec.reinit().map_err(|e| corrupt(encoding, &e))?;
                self.ended = false;
            }
            let mut buffer = WriteBuffer::new_initialized(&mut self.scratch);
            let ended = codec
                .decode(&mut input, &mut buffer)
                .map_err(|e| corrupt(encoding, &e))?;
            let written = buffer.written_len();
            out.extend_from_slice(&self.scratch[..written]);
            self.output += written as u64;
            self.ended = ended;
            bounds(self.output, self.input, &self.limits, encoding)?;
            if !ended && written < STEP && input.unwritten().is_empty() {
                break; // everything given was consumed; more output needs more input
            }
        }
        Ok(Bytes::from(out))
    }

    /// The body ended: what the decoder still holds, and an error if the encoded data was cut.
    pub fn finish(&mut self) -> Result<Bytes, NetError> {
        let Some((encoding, codec)) = &mut self.codec else {
            return Ok(Bytes::new());
        };
        let encoding = *encoding;
        if self.ended {
            return Ok(Bytes::new());
        }
        let mut out = Vec::new();
        loop {
            let mut buffer = WriteBuffer::new_initialized(&mut self.scratch);
            let done = codec
                .finish(&mut buffer)
                .map_err(|e| corrupt(encoding, &e))?;
            let written = buffer.written_len();
            out.extend_from_slice(&self.scratch[..written]);
            self.output += written as u64;
            bounds(self.output, self.input, &self.limits, encoding)?;
            if done {
                break;
            }
            if written == 0 {
                return Err(NetError::CorruptEncoding {
                    encoding,
                    reason: "the encoded body is cut short".into(),
                });
            }
        }
        Ok(Bytes::from(out))
    }

    fn check_size(&self) -> Result<(), NetError> {
        match self.limits.max_output {
            Some(max) if self.output > max => Err(NetError::BodyTooLarge(max as usize)),
            _ => Ok(()),
        }
    }
}

fn bounds(
    output: u64,
    input: u64,
    limits: &DecodeLimits,
    encoding: &'static str,
) -> Result<(), NetError> {
    if let Some(max) = limits.max_output {
        if output > max {
            return Err(NetError::BodyTooLarge(max as usize));
        }
    }
    if output > RATIO_FLOOR && output > limits.max_ratio.saturating_mul(input.max(1)) {
        return Err(NetError::DecompressionBomb {
            encoding,
            ratio: limits.max_ratio,
        });
    }
    Ok(())
}

fn corrupt(encoding: &'static str, err: &std::io::Error) -> NetError {
    NetError::CorruptEncoding {
        encoding,
        reason: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_output: Some(8 << 20),
        max_ratio: 100,
    };

    fn gzip(data: &[u8]) -> Vec<u8> {
        use compression_codecs::{EncodeV2, GzipEncoder};
        let mut encoder = GzipEncoder::new(compression_codecs::core::Level::Default.into());
        let mut out = vec![0u8; data.len() + 1024];
        let mut input = PartialBuffer::new(data);
        let mut buffer = WriteBuffer::new_initialized(&mut out);
        encoder.encode(&mut input, &mut buffer).unwrap();
        while !encoder.finish(&mut buffer).unwrap() {}
        let n = buffer.written_len();
        out.truncate(n);
        out
    }

    fn decode_all(
        decoder: &mut BodyDecoder,
        data: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, NetError> {
        let mut out = Vec::new();
        for part in data.chunks(piece) {
            out.extend_from_slice(&decoder.feed(Bytes::copy_from_slice(part))?);
        }
        out.extend_from_slice(&decoder.finish()?);
        Ok(out)
    }

    #[test]
    fn identity_passes_through_and_is_bounded() {
        let mut d = BodyDecoder::new(
            None,
            DecodeLimits {
                max_output: Some(10),
                max_ratio: 100,
            },
        )
        .unwrap();
        assert_eq!(&d.feed(Bytes::from_static(b"hello")).unwrap()[..], b"hello");
        assert!(matches!(
            d.feed(Bytes::from_static(b"world!")),
            Err(NetError::BodyTooLarge(10))
        ));
    }

    #[test]
    fn gzip_round_trips_in_any_chunking_and_two_members() {
        let text = b"The quick brown fox jumps over the lazy dog. ".repeat(200);
        let mut two = gzip(&text);
        two.extend(gzip(b"second member"));
        for piece in [1, 7, 100, 65536] {
            let mut d = BodyDecoder::new(Some("gzip"), LIMITS).unwrap();
            let out = decode_all(&mut d, &two, piece).unwrap();
            assert_eq!(&out[..text.len()], &text[..]);
            assert_eq!(&out[text.len()..], b"second member");
        }
    }

    #[test]
    fn a_bomb_stops_within_a_step_of_the_bound() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        let mut d = BodyDecoder::new(
            Some("gzip"),
            DecodeLimits {
                max_output: None,
                max_ratio: 100,
            },
        )
        .unwrap();
        let err = decode_all(&mut d, &bomb, 16 * 1024).unwrap_err();
        assert!(
            matches!(
                err,
                NetError::DecompressionBomb {
                    encoding: "gzip",
                    ratio: 100
                }
            ),
            "{err}"
        );
        assert!(d.output() <= 100 * bomb.len() as u64 + RATIO_FLOOR + STEP as u64);
        let mut d = BodyDecoder::new(Some("gzip"), LIMITS).unwrap();
        assert!(matches!(
            decode_all(&mut d, &bomb, bomb.len()),
            Err(NetError::BodyTooLarge(_) | NetError::DecompressionBomb { .. })
        ));
        assert!(d.output() <= (8 << 20) + STEP as u64);
    }

    #[test]
    fn truncated_and_corrupt_bodies_are_errors() {
        let data = gzip(&b"abc".repeat(1000));
        let mut d = BodyDecoder::new(Some("gzip"), LIMITS).unwrap();
        assert!(matches!(
            decode_all(&mut d, &data[..data.len() - 4], 1000),
            Err(NetError::CorruptEncoding { .. })
        ));
        let mut d = BodyDecoder::new(Some("gzip"), LIMITS).unwrap();
        assert!(matches!(
            decode_all(&mut d, b"not gzip at all", 100),
            Err(NetError::CorruptEncoding { .. })
        ));
        assert!(matches!(
            BodyDecoder::new(Some("gzip, br"), LIMITS),
            Err(NetError::UnknownEncoding(_))
        ));
        // `?` is a whole (empty) brotli stream: what follows it is not part of the body.
        let mut d = BodyDecoder::new(Some("br"), LIMITS).unwrap();
        assert!(matches!(
            decode_all(&mut d, b"???", 100),
            Err(NetError::CorruptEncoding { encoding: "br", .. })
        ));
        assert!(matches!(
            BodyDecoder::new(Some("compress"), LIMITS),
            Err(NetError::UnknownEncoding(_))
        ));
    }
}
