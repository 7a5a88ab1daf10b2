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
    let request = parse(body)?;
    let mut tally = Tally::new(encoding);
    for message in messages(&request)? {
        let Value::Object(message) = message else {
            return Err(TokenError::InvalidRequest(
                "each message must be an object".into(),
            ));
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
                // Anything else (audio, legacy `function_call`, ...) is estimated from its JSON.
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
    Ok(tally.done())
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

    #[test]
    fn bad_bodies_are_errors() {
        assert!(count_openai_chat(&Encoding::O200kBase, b"[").is_err());
        assert!(count_openai_chat(&Encoding::O200kBase, b"[]").is_err());
        assert!(count_openai_chat(&Encoding::O200kBase, br#"{"messages":3}"#).is_err());
        assert!(count_openai_chat(&Encoding::O200kBase, br#"{"messages":[3]}"#).is_err());
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
