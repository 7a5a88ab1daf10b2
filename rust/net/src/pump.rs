//! The byte side of the stream pump: a task that reads a streamed answer from the provider,
//! frames it (server-sent events, the OpenAI chat relay, or AWS event-stream messages) and
//! queues what it produced for the request's Python task, which sends it to the client.
//!
//! Backpressure: the task reads the next chunk from the provider only while the queue holds
//! less than its bound; the Python side takes from the queue only while the client keeps up
//! (`client_socket`), so a slow client slows the reading from the provider down to its own
//! pace, TCP's flow control carrying it upstream. Memory per stream is the queue's bound plus
//! one decoded chunk.
//!
//! The consumer is woken by a callback (`Waker`) registered when it finds the queue empty; the
//! binding makes that callback complete an asyncio future. Dropping the [`Pump`] ends the task,
//! which drops the response body: the provider's connection is closed mid-answer (never
//! returned to the pool), so it stops generating.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tollway_core::chat_stream::{ChatStreamError, OpenAIChatStream};
use tollway_core::eventstream::{Decoder as EventStreamDecoder, Message};
use tollway_core::sse::{Event, SseParser};

use crate::error::NetError;
use crate::transport::Body;

/// How a streamed body is framed for the consumer.
#[derive(Debug, Clone, Copy)]
pub enum Framing {
    /// The decoded bytes as they arrive.
    Bytes,
    /// Server-sent events, parsed.
    Sse { max_line_bytes: usize },
    /// An OpenAI chat stream relayed to an OpenAI client (`chat_stream`): the bytes to forward.
    OpenAIChat {
        strip_usage: bool,
        max_line_bytes: usize,
        max_pending_bytes: usize,
    },
    /// AWS event-stream messages (Bedrock).
    EventStream { max_message_bytes: usize },
}

enum Framer {
    Bytes,
    Sse(SseParser),
    OpenAIChat(OpenAIChatStream),
    EventStream(EventStreamDecoder),
}

/// What the consumer takes: everything queued since it last took.
pub enum Batch {
    Bytes(Bytes),
    Events(Vec<Event>),
    Messages(Vec<Message>),
}

/// What [`Pump::take`] found.
pub enum Taken {
    Batch(Batch),
    /// Nothing queued yet.
    Empty,
    /// The stream ended: `Ok` at its proper end, else how it failed. Reported once; later
    /// calls find `Empty`... never: they find the same end again.
    End(Result<(), NetError>),
}

/// Called (from the runtime's thread) when something the consumer waits for happened.
pub type Waker = Box<dyn FnOnce() + Send>;

struct State {
    framer: Framer,
    bytes: BytesMut,
    events: Vec<Event>,
    messages: Vec<Message>,
    queued: usize,
    end: Option<Result<(), NetError>>,
    waker: Option<Waker>,
}

struct Shared {
    state: Mutex<State>,
    /// The consumer took from the queue.
    space: Notify,
    bound: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned state is still a consistent one.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Pump {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Pump {
    /// Start pumping `body` on the current runtime. `bound`: the most bytes queued for the
    /// consumer before reading from the provider pauses.
    pub fn spawn(body: Body, framing: Framing, bound: usize) -> Pump {
        let framer = match framing {
            Framing::Bytes => Framer::Bytes,
            Framing::Sse { max_line_bytes } => Framer::Sse(SseParser::new(max_line_bytes)),
            Framing::OpenAIChat {
                strip_usage,
                max_line_bytes,
                max_pending_bytes,
            } => Framer::OpenAIChat(OpenAIChatStream::new(
                strip_usage,
                max_line_bytes,
                max_pending_bytes,
            )),
            Framing::EventStream { max_message_bytes } => {
                Framer::EventStream(EventStreamDecoder::new(max_message_bytes))
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                framer,
                bytes: BytesMut::new(),
                events: Vec::new(),
                messages: Vec::new(),
                queued: 0,
                end: None,
                waker: None,
            }),
            space: Notify::new(),
            bound: bound.max(1),
        });
        let task = tokio::spawn(run(shared.clone(), body));
        Pump { shared, task }
    }

    /// Take what is queued, or find the end, or nothing.
    pub fn take(&self) -> Taken {
        let mut state = self.shared.lock();
        let batch = match state.framer {
            Framer::Bytes | Framer::OpenAIChat(_) if !state.bytes.is_empty() => {
                Some(Batch::Bytes(state.bytes.split().freeze()))
            }
            Framer::Sse(_) if !state.events.is_empty() => {
                Some(Batch::Events(std::mem::take(&mut state.events)))
            }
            Framer::EventStream(_) if !state.messages.is_empty() => {
                Some(Batch::Messages(std::mem::take(&mut state.messages)))
            }
            _ => None,
        };
        if let Some(batch) = batch {
            state.queued = 0;
            drop(state);
            self.shared.space.notify_one();
            return Taken::Batch(batch);
        }
        match &state.end {
            Some(end) => Taken::End(end.clone()),
            None => Taken::Empty,
        }
    }

    /// Call `waker` once something can be taken (at once if something already can). Replaces
    /// a waker registered before and not yet called.
    pub fn wake_when_ready(&self, waker: Waker) {
        let mut state = self.shared.lock();
        let ready = state.queued > 0 || state.end.is_some();
        if ready {
            drop(state);
            waker();
        } else {
            state.waker = Some(waker);
        }
    }

    /// The OpenAI relay's state (`None` for other framings), for usage and the output text.
    pub fn with_chat<R>(&self, f: impl FnOnce(&mut OpenAIChatStream) -> R) -> Option<R> {
        let mut state = self.shared.lock();
        match &mut state.framer {
            Framer::OpenAIChat(chat) => Some(f(chat)),
            _ => None,
        }
    }

    /// Stop reading now (as dropping the pump does): the response body is dropped, so a
    /// connection not read to its end is closed.
    pub fn close(&self) {
        self.task.abort();
    }

    /// Bytes of an incomplete event-stream message (a stream cut inside a message).
    pub fn partial_message_bytes(&self) -> usize {
        match &self.shared.lock().framer {
            Framer::EventStream(decoder) => decoder.buffered(),
            _ => 0,
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(shared: Arc<Shared>, mut body: Body) {
    let end = loop {
        // Wait for room: the consumer is behind (its client reads slowly).
        loop {
            let space = shared.space.notified();
            if shared.lock().queued < shared.bound {
                break;
            }
            tokio::pin!(space);
            if tokio::time::timeout_at(body.deadline(), space)
                .await
                .is_err()
            {
                // The attempt's deadline passed while the client was not reading: the total
                // timeout, as for a provider that is too slow.
                break;
            }
        }
        match body.next().await {
            Ok(Some(chunk)) => {
                let mut state = shared.lock();
                if let Err(err) = frame(&mut state, &chunk) {
                    break Err(err);
                }
                if state.queued > 0 {
                    if let Some(waker) = state.waker.take() {
                        drop(state);
                        waker();
                    }
                }
            }
            Ok(None) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    let waker = {
        let mut state = shared.lock();
        state.end = Some(end);
        state.waker.take()
    };
    if let Some(waker) = waker {
        waker();
    }
}

fn frame(state: &mut State, chunk: &[u8]) -> Result<(), NetError> {
    let State {
        framer,
        bytes,
        events,
        messages,
        queued,
        ..
    } = state;
    match framer {
        Framer::Bytes => {
            bytes.extend_from_slice(chunk);
            *queued += chunk.len();
        }
        Framer::Sse(parser) => {
            let before = events.len();
            parser
                .feed_into(chunk, events)
                .map_err(|e| NetError::MalformedStream(e.to_string()))?;
            *queued += events[before..]
                .iter()
                .map(|e| e.data.len() + e.event.as_ref().map_or(0, String::len) + 16)
                .sum::<usize>();
        }
        Framer::OpenAIChat(chat) => {
            let out = chat.feed(chunk).map_err(|e| match e {
                ChatStreamError::Sse(e) => NetError::MalformedStream(e.to_string()),
                ChatStreamError::NotJson { reason } => NetError::EventNotJson(reason),
            })?;
            bytes.extend_from_slice(out);
            *queued += out.len();
        }
        Framer::EventStream(decoder) => {
            let found = decoder
                .feed(chunk)
                .map_err(|e| NetError::MalformedStream(e.to_string()))?;
            *queued += found.iter().map(|m| m.payload.len() + 64).sum::<usize>();
            messages.extend(found);
        }
    }
    Ok(())
}
