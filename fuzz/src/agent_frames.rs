//! Fuzz target body: the guest agent's framing (`kvmkit-agent-proto`) on arbitrary bytes, as
//! the agent reads a request and as the host reads the answer.
//!
//! Input: the first byte picks the read size of a chunking reader (1 to 16 bytes per `read`);
//! the rest is the byte stream one peer sent.
//!
//! Checks: `decode_frame` over the whole buffer and `read_frame` over the chunking reader see
//! the same frames and fail at the same place (a truncated tail is "need more" for one and
//! `Truncated` for the other); every frame is within its kind's limit and re-encodes to exactly
//! the bytes it was decoded from; frames fed to a `RequestBuilder` either build requests that
//! re-encode and re-parse to themselves, or are refused (where the agent closes the
//! connection); `Exit` payloads that decode re-encode to themselves.

use std::io::Read;

use kvmkit_agent_proto::{decode_frame, encode_frame, read_frame, Exit, Kind, ProtoError, RequestBuilder, HEADER_LEN};

/// What one input reached.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Frames decoded.
    pub frames: usize,
    /// Requests completed (a `Run` frame accepted).
    pub requests: usize,
    /// Inputs the agent would refuse (a bad header or a bad request).
    pub refused: usize,
}

/// A reader that hands out at most `chunk` bytes per call.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Runs one input; panics when a check fails.
pub fn run(data: &[u8]) -> Outcome {
    let mut o = Outcome::default();
    let (chunk, stream) = match data.split_first() {
        Some((c, rest)) => (1 + usize::from(c % 16), rest),
        None => (1, data),
    };
    let mut reader = Chunked { data: stream, chunk };
    let mut builder = RequestBuilder::default();
    let mut at = 0;
    loop {
        let decoded = decode_frame(&stream[at..]);
        let read = read_frame(&mut reader);
        let frame = match (decoded, read) {
            (Ok(Some((f, used))), Ok(Some(g))) => {
                assert_eq!(f, g, "decode_frame and read_frame disagree at {at}");
                assert_eq!(used, HEADER_LEN + f.payload.len());
                assert!(f.payload.len() <= f.kind.max_payload());
                let mut again = Vec::new();
                encode_frame(f.kind, &f.payload, &mut again).expect("a decoded frame re-encodes");
                assert_eq!(again, stream[at..at + used], "re-encoding changed the bytes");
                at += used;
                f
            }
            (Ok(None), Ok(None)) => {
                assert_eq!(at, stream.len(), "a clean end only at the end");
                return o;
            }
            (Ok(None), Err(ProtoError::Truncated)) => {
                assert!(at < stream.len());
                return o;
            }
            (Err(a), Err(b)) => {
                assert_eq!(
                    std::mem::discriminant(&a),
                    std::mem::discriminant(&b),
                    "different errors: {a} / {b}"
                );
                o.refused += 1;
                return o;
            }
            (a, b) => panic!("decode_frame {a:?} but read_frame {b:?} at {at}"),
        };
        o.frames += 1;
        if frame.kind == Kind::Exit {
            if let Ok(e) = Exit::decode(&frame.payload) {
                assert_eq!(e.encode()[..], frame.payload[..]);
            }
        }
        match builder.push(frame) {
            Ok(Some(req)) => {
                o.requests += 1;
                let bytes = req.encode().expect("a built request re-encodes");
                let mut b = RequestBuilder::default();
                let mut rest = &bytes[..];
                let mut again = None;
                while let Some((f, used)) = decode_frame(rest).expect("re-encoded frames decode") {
                    rest = &rest[used..];
                    again = b.push(f).expect("re-encoded frames are accepted");
                }
                assert!(rest.is_empty());
                assert_eq!(again.as_ref(), Some(&req), "request round trip");
            }
            Ok(None) => {}
            Err(_) => {
                // The agent answers with an Error frame and closes; a new builder is a new
                // connection (the host side keeps decoding output frames).
                o.refused += 1;
                builder = RequestBuilder::default();
            }
        }
    }
}
