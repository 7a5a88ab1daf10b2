//! Chat-aware counting: the prompt tokens of a whole request body, counted the way the
//! provider bills them as far as that is published.
//!
//! # OpenAI chat completions (`count_openai_chat`)
//! OpenAI's published rule (the "How to count tokens with tiktoken" cookbook) for current chat
//! models: every message costs 3 tokens of framing plus the tokens of each of its string
//! fields (`role`, `content`, `name`, `tool_call_id`, ...), a `name` costs 1 more, and every
//! reply is primed with 3 tokens. For text-only messages that is exact. Beyond it, tollway
//! estimates, and marks the count approximate:
//! - image parts: 85 tokens at `detail: "low"`; otherwise the cost of a 1024x1024 image at
//!   high detail, 765 tokens (85 + 4 tiles of 170), since the gateway does not decode images;
//! - tool calls in assistant messages: the function name and arguments, plus 3 per call;
//! - tool (and legacy function) definitions: 12 tokens, plus for each function 8 tokens and the
//!   tokens of its name, description and JSON parameters schema;
//! - `response_format` JSON schemas: the tokens of the schema's JSON text;
//! - any other content part (audio, files): not counted.
//!
//! # Anthropic messages (`count_anthropic_messages`)
//! Anthropic publishes no tokenizer, so this is always approximate: the system prompt, each
//! message's text, tool use and tool results, and tool definitions are counted with the
//! encoding given (normally `anthropic`, a scaled `cl100k_base`), plus 3 tokens per message;
//! each image is estimated at 1,600 tokens (Anthropic's documented cost of a ~1.15 megapixel
//! image, the size it resizes larger images down to).

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Count, Exactness, TextCounter, TokenError};

const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;
const IMAGE_LOW_DETAIL: u64 = 85;
const IMAGE_HIGH_DETAIL_1024: u64 = 85 + 4 * 170;
const TOOLS_OVERHEAD: u64 = 12;
const TOKENS_PER_FUNCTION: u64 = 8;
const TOKENS_PER_TOOL_CALL: u64 = 3;
const ANTHROPIC_IMAGE: u64 = 1600;

struct Tally<'e> {
    encoding: &'e dyn TextCounter,
    tokens: u64,
    exactness: Exactness,
}

impl<'e> Tally<'e> {
    fn new(encoding: &'e dyn TextCounter) -> Self {
        let framing = if encoding.openai_framing() {
            Exactness::Exact
        } else {
            Exactness::Approximate
        };
        Self {
            encoding,
            tokens: 0,
            exactness: encoding.exactness().and(framing),
        }
    }

    fn text(&mut self, text: &str) {
        self.tokens += self.encoding.count_tokens(text);
    }

    fn estimate(&mut self, tokens: u64) {
        self.tokens += tokens;
        self.exactness = Exactness::Approximate;
    }

    fn json(&mut self, value: &Value) {
        self.text(&value.to_string());
        self.exactness = Exactness::Approximate;
    }

    /// A tool (function) definition: its name, description and JSON schema, plus framing.
    fn function(&mut self, function: &Value, schema_key: &str) {
        self.estimate(TOKENS_PER_FUNCTION);
        self.text(function.get("name").and_then(Value::as_str).unwrap_or(""));
        self.text(
            function
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
        if let Some(schema) = function.get(schema_key) {
            self.json(schema);
        }
    }

    fn done(self) -> Count {
        Count {
            tokens: self.tokens,
            exactness: self.exactness,
        }
    }
}

fn parse(body: &[u8]) -> Result<serde_json::Map<String, Value>, TokenError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TokenError::InvalidRequest(
            "the body is not a JSON object".into(),
        )),
        Err(err) => Err(TokenError::InvalidRequest(format!(
            "the body is not valid JSON: {err}"
        ))),
    }
}

fn messages(request: &serde_json::Map<String, Value>) -> Result<&Vec<Value>, TokenError> {
    match request.get("messages") {
        Some(Value::Array(list)) => Ok(list),
        _ => Err(TokenError::InvalidRequest(
            "`messages` must be an array".into(),
        )),
    }
}

/// Prompt tokens of an OpenAI chat-completions request body.
pub fn count_openai_chat(encoding: &dyn TextCounter, body: &[u8]) -> Result<Count, TokenError> {
    let request = parse_openai_chat(body)?;
    let mut tally = Tally::new(encoding);
    for message in &request.messages {
        tally.tokens += TOKENS_PER_MESSAGE;
        for (key, value) in &message.0 {
            match (key.as_ref(), value) {
                (_, Field::Str(text)) => {
                    tally.text(text);
                    if key == "name" {
                        tally.tokens += TOKENS_PER_NAME;
                    }
                }
                ("content", Field::Other(Value::Array(parts))) => openai_parts(&mut tally, parts),
                ("tool_calls", Field::Other(Value::Array(calls))) => {
                    for call in calls {
                        let function = call.get("function");
                        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
                        let args = function
                            .and_then(|f| f.get("arguments"))
                            .and_then(Value::as_str);
                        tally.text(name.unwrap_or(""));
                        tally.text(args.unwrap_or(""));
                        tally.estimate(TOKENS_PER_TOOL_CALL);
                    }
                }
                (_, Field::Other(Value::Null)) => {}
                // Anything else (audio, legacy `function_call`, ...) is estimated from its JSON.
                (_, Field::Other(other)) => tally.json(other),
            }
        }
    }
    tally.tokens += REPLY_PRIMING;
    let mut functions: Vec<&Value> = Vec::new();
    if let Some(Value::Array(tools)) = &request.tools {
        functions.extend(tools.iter().map(|t| t.get("function").unwrap_or(t)));
    }
    if let Some(Value::Array(legacy)) = &request.functions {
        functions.extend(legacy.iter());
    }
    if !functions.is_empty() {
        tally.estimate(TOOLS_OVERHEAD);
        for function in functions {
            tally.function(function, "parameters");
        }
    }
    if let Some(schema) = request
        .response_format
        .as_ref()
        .and_then(|f| f.get("json_schema"))
        .and_then(|s| s.get("schema"))
    {
        tally.json(schema);
    }
    Ok(tally.done())
}

// -- the OpenAI body, read for counting ---------------------------------------------------------
//
// Only what counting reads is kept: each message's fields (strings as they are in the body,
// borrowed when they hold no escape; anything else as a `Value`), `tools`, `functions` and
// `response_format`; every other field is skipped without being built. Reading the body into
// a whole `Value` tree first cost more than counting its tokens. A key given twice keeps its
// last value, as in a `Value` object.

/// What `count_openai_chat` reads of a body.
struct OpenAiChat<'a> {
    messages: Vec<Message<'a>>,
    tools: Option<Value>,
    functions: Option<Value>,
    response_format: Option<Value>,
}

/// One message: its fields in order.
struct Message<'a>(Vec<(Cow<'a, str>, Field<'a>)>);

/// A message field's value.
enum Field<'a> {
    Str(Cow<'a, str>),
    Other(Value),
}

fn parse_openai_chat(body: &[u8]) -> Result<OpenAiChat<'_>, TokenError> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    let parsed = reader
        .deserialize_map(BodyVisitor)
        .and_then(|body| reader.end().map(|()| body));
    match parsed {
        Ok(Some(body)) => Ok(body),
        Ok(None) => Err(TokenError::InvalidRequest(
            "`messages` must be an array".into(),
        )),
        Err(err) if err.is_data() => Err(TokenError::InvalidRequest(err.to_string())),
        Err(err) => Err(TokenError::InvalidRequest(format!(
            "the body is not valid JSON: {err}"
        ))),
    }
}

/// A string, borrowed from the body when it holds no escape.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_str(FieldVisitor)
            .and_then(|field| match field {
                Field::Str(text) => Ok(Text(text)),
                Field::Other(_) => Err(serde::de::Error::custom("expected a string")),
            })
    }
}

/// The body: `None` when it has no `messages`.
struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Option<OpenAiChat<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the body to be a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut messages, mut tools, mut functions, mut response_format) =
            (None, None, None, None);
        while let Some(Text(key)) = map.next_key()? {
            match key.as_ref() {
                "messages" => messages = Some(map.next_value::<Messages<'de>>()?.0),
                "tools" => tools = Some(map.next_value()?),
                "functions" => functions = Some(map.next_value()?),
                "response_format" => response_format = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(messages.map(|messages| OpenAiChat {
            messages,
            tools,
            functions,
            response_format,
        }))
    }
}

/// `messages`: an array of objects.
struct Messages<'a>(Vec<Message<'a>>);

impl<'de> Deserialize<'de> for Messages<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessagesVisitor;
        impl<'de> Visitor<'de> for MessagesVisitor {
            type Value = Messages<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`messages` to be an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut messages = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(message) = seq.next_element()? {
                    messages.push(message);
                }
                Ok(Messages(messages))
            }
        }
        deserializer.deserialize_seq(MessagesVisitor)
    }
}

impl<'de> Deserialize<'de> for Message<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessageVisitor;
        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Message<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("each message to be an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields: Vec<(Cow<'de, str>, Field<'de>)> = Vec::with_capacity(4);
                while let Some(Text(key)) = map.next_key()? {
                    let value = map.next_value::<Field<'de>>()?;
                    match fields.iter_mut().find(|(known, _)| *known == key) {
                        Some(field) => field.1 = value,
                        None => fields.push((key, value)),
                    }
                }
                Ok(Message(fields))
            }
        }
        deserializer.deserialize_map(MessageVisitor)
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

/// Any JSON value: a string as `Field::Str`, the rest as the `Value` serde_json would build.
struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(text)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Other(Value::Null))
    }

    fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Field::Other(Value::Bool(value)))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Field::Other(Value::from(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Field::Other(Value::from(value)))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Field::Other(Value::from(value)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(Field::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(Field::Other)
    }
}

fn openai_parts(tally: &mut Tally<'_>, parts: &[Value]) {
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => tally.text(part.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("image_url") => {
                let detail = part
                    .get("image_url")
                    .and_then(|i| i.get("detail"))
                    .and_then(Value::as_str);
                tally.estimate(if detail == Some("low") {
                    IMAGE_LOW_DETAIL
                } else {
                    IMAGE_HIGH_DETAIL_1024
                });
            }
            _ => tally.estimate(0),
        }
    }
}

/// Prompt tokens of an Anthropic Messages request body (always approximate).
pub fn count_anthropic_messages(
    encoding: &dyn TextCounter,
    body: &[u8],
) -> Result<Count, TokenError> {
    let request = parse(body)?;
    let mut tally = Tally::new(encoding);
    tally.exactness = Exactness::Approximate;
    match request.get("system") {
        Some(Value::String(text)) => tally.text(text),
        Some(Value::Array(blocks)) => anthropic_blocks(&mut tally, blocks),
        _ => {}
    }
    for message in messages(&request)? {
        tally.tokens += TOKENS_PER_MESSAGE;
        match message.get("content") {
            Some(Value::String(text)) => tally.text(text),
            Some(Value::Array(blocks)) => anthropic_blocks(&mut tally, blocks),
            _ => {}
        }
    }
    if let Some(Value::Array(tools)) = request.get("tools") {
        tally.estimate(TOOLS_OVERHEAD);
        for tool in tools {
            tally.function(tool, "input_schema");
        }
    }
    Ok(tally.done())
}

fn anthropic_blocks(tally: &mut Tally<'_>, blocks: &[Value]) {
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => tally.text(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                tally.text(block.get("thinking").and_then(Value::as_str).unwrap_or(""))
            }
            Some("image") | Some("document") => tally.estimate(ANTHROPIC_IMAGE),
            Some("tool_use") => {
                tally.text(block.get("name").and_then(Value::as_str).unwrap_or(""));
                if let Some(input) = block.get("input") {
                    tally.json(input);
                }
            }
            Some("tool_result") => match block.get("content") {
                Some(Value::String(text)) => tally.text(text),
                Some(Value::Array(inner)) => anthropic_blocks(tally, inner),
                _ => {}
            },
            _ => tally.estimate(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::Encoding;

    fn count(body: &str) -> Count {
        count_openai_chat(&Encoding::O200kBase, body.as_bytes()).unwrap()
    }

    #[test]
    fn text_messages_follow_the_published_rule() {
        let hello = Encoding::O200kBase.count_tokens("Hello, world!");
        let user = Encoding::O200kBase.count_tokens("user");
        let c = count(r#"{"model":"x","messages":[{"role":"user","content":"Hello, world!"}]}"#);
        assert_eq!(c.tokens, 3 + user + hello + 3);
        assert_eq!(c.exactness, Exactness::Exact);
    }

    #[test]
    fn names_cost_one_more() {
        let without = count(r#"{"messages":[{"role":"user","content":"hi"}]}"#).tokens;
        let with = count(r#"{"messages":[{"role":"user","content":"hi","name":"bob"}]}"#).tokens;
        assert_eq!(with, without + Encoding::O200kBase.count_tokens("bob") + 1);
    }

    #[test]
    fn text_parts_are_exact_and_images_estimated() {
        let parts =
            count(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#);
        let plain = count(r#"{"messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(parts, plain);
        let image = count(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x","detail":"low"}}]}]}"#,
        );
        assert_eq!(image.exactness, Exactness::Approximate);
        assert_eq!(
            image.tokens,
            3 + Encoding::O200kBase.count_tokens("user") + 85 + 3
        );
    }

    #[test]
    fn tools_make_the_count_approximate() {
        let c = count(
            r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object"}}}]}"#,
        );
        assert_eq!(c.exactness, Exactness::Approximate);
        assert!(c.tokens > count(r#"{"messages":[{"role":"user","content":"hi"}]}"#).tokens + 20);
    }

    /// The count as it was made before `count_openai_chat` read the body for itself: from a
    /// whole `Value` tree.
    fn count_from_value(encoding: &dyn TextCounter, body: &[u8]) -> Option<Count> {
        let request = parse(body).ok()?;
        let mut tally = Tally::new(encoding);
        let Some(Value::Array(messages)) = request.get("messages") else {
            return None;
        };
        for message in messages {
            let Value::Object(message) = message else {
                return None;
            };
            tally.tokens += TOKENS_PER_MESSAGE;
            for (key, value) in message {
                match (key.as_str(), value) {
                    (_, Value::String(text)) => {
                        tally.text(text);
                        if key == "name" {
                            tally.tokens += TOKENS_PER_NAME;
                        }
                    }
                    ("content", Value::Array(parts)) => openai_parts(&mut tally, parts),
                    ("tool_calls", Value::Array(calls)) => {
                        for call in calls {
                            let function = call.get("function");
                            let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
                            let args = function
                                .and_then(|f| f.get("arguments"))
                                .and_then(Value::as_str);
                            tally.text(name.unwrap_or(""));
                            tally.text(args.unwrap_or(""));
                            tally.estimate(TOKENS_PER_TOOL_CALL);
                        }
                    }
                    (_, Value::Null) => {}
                    (_, other) => tally.json(other),
                }
            }
        }
        tally.tokens += REPLY_PRIMING;
        let mut functions: Vec<&Value> = Vec::new();
        if let Some(Value::Array(tools)) = request.get("tools") {
            functions.extend(tools.iter().map(|t| t.get("function").unwrap_or(t)));
        }
        if let Some(Value::Array(legacy)) = request.get("functions") {
            functions.extend(legacy.iter());
        }
        if !functions.is_empty() {
            tally.estimate(TOOLS_OVERHEAD);
            for function in functions {
                tally.function(function, "parameters");
            }
        }
        if let Some(schema) = request
            .get("response_format")
            .and_then(|f| f.get("json_schema"))
            .and_then(|s| s.get("schema"))
        {
            tally.json(schema);
        }
        Some(tally.done())
    }

    /// Message fields and values of the kinds bodies carry, escapes and repeated keys included.
    fn field() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let key = prop_oneof![
            Just("role"),
            Just("content"),
            Just("name"),
            Just("tool_calls"),
            Just("tool_call_id"),
            Just("audio"),
            Just("r\\u00f4le"),
        ];
        let value = prop_oneof![
            Just(r#""user""#.to_owned()),
            Just(r#""Hello, \"world\"\n\u00e9t\u00e9 \ud83e\udd8a""#.to_owned()),
            "[a-z ]{0,12}".prop_map(|t| format!("\"{t}\"")),
            Just("null".to_owned()),
            Just("3".to_owned()),
            Just("-2.5e3".to_owned()),
            Just("true".to_owned()),
            Just(r#"[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"x","detail":"low"}},{"type":"input_audio"}]"#.to_owned()),
            Just(r#"[{"id":"c1","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{}]"#.to_owned()),
            Just(r#"{"id":"a1","data":"AAAA"}"#.to_owned()),
        ];
        (key, value).prop_map(|(k, v)| format!("\"{k}\":{v}"))
    }

    proptest::proptest! {
        #[test]
        fn reading_the_body_counts_as_a_value_tree_does(
            messages in proptest::collection::vec(proptest::collection::vec(field(), 0..6), 0..4),
            extra in proptest::sample::select(vec![
                "",
                r#","model":"gpt-4o","temperature":0.5,"stream":false"#,
                r#","tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object"}}}]"#,
                r#","functions":[{"name":"g","parameters":{}}],"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"object"}}}"#,
                r#","messages":[{"role":"user","content":"the last messages win"}]"#,
                r#","tools":null"#,
            ]),
            before in proptest::bool::ANY,
        ) {
            let list = messages
                .iter()
                .map(|fields| format!("{{{}}}", fields.join(",")))
                .collect::<Vec<_>>()
                .join(",");
            let extra = extra.trim_start_matches(',');
            let body = match (extra.is_empty(), before) {
                (true, _) => format!(r#"{{"messages":[{list}]}}"#),
                (false, true) => format!(r#"{{{extra},"messages":[{list}]}}"#),
                (false, false) => format!(r#"{{"messages":[{list}],{extra}}}"#),
            };
            let expected = count_from_value(&Encoding::O200kBase, body.as_bytes());
            proptest::prop_assert!(expected.is_some(), "{}", body);
            let counted = count_openai_chat(&Encoding::O200kBase, body.as_bytes()).ok();
            proptest::prop_assert_eq!(counted, expected, "{}", body);
        }
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert!(count_openai_chat(&Encoding::O200kBase, b"[").is_err());
        assert!(count_openai_chat(&Encoding::O200kBase, b"[]").is_err());
        assert!(count_openai_chat(&Encoding::O200kBase, br#"{"messages":3}"#).is_err());
        assert!(count_openai_chat(&Encoding::O200kBase, br#"{"messages":[3]}"#).is_err());
        assert!(count_openai_chat(&Encoding::O200kBase, br#"{"model":"x"}"#).is_err());
        assert!(count_openai_chat(&Encoding::O200kBase, br#"{"messages":[]} x"#).is_err());
        assert!(count_openai_chat(&Encoding::O200kBase, br#"{"messages":[{"role":1}"#).is_err());
    }

    #[test]
    fn anthropic_is_always_approximate() {
        let enc = Encoding::from_name("anthropic").unwrap();
        let c = count_anthropic_messages(
            &enc,
            br#"{"system":"Be brief.","messages":[{"role":"user","content":[{"type":"text","text":"Hello"},{"type":"image","source":{}}]}]}"#,
        )
        .unwrap();
        assert_eq!(c.exactness, Exactness::Approximate);
        assert!(c.tokens >= 1600 + 3);
    }
}
