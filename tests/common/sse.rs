//! A test's Server-Sent Events client: photoq's stream, parsed by eventsource-stream.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};

/// How long a test waits for the next message before failing.
pub const NEXT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Sse {
    stream: Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
}

impl Sse {
    /// Opens `url` with `Accept: text/event-stream` and the key (if any) in the header,
    /// and the given extra headers; fails unless the answer is a 200 event stream.
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        key: Option<&str>,
        headers: &[(&str, String)],
    ) -> Sse {
        let mut req = client.get(url).header("Accept", "text/event-stream");
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let res = req.send().await.expect("open event stream");
        assert_eq!(res.status(), 200, "event stream opens: {url}");
        let kind = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(kind.starts_with("text/event-stream"), "content type {kind}");
        Sse {
            stream: Box::pin(
                res.bytes_stream()
                    .eventsource()
                    .map(|r| r.map_err(|e| e.to_string())),
            ),
        }
    }

    /// The next message, or None once the server ended the stream.
    pub async fn next(&mut self) -> Option<Event> {
        match tokio::time::timeout(NEXT_TIMEOUT, self.stream.next()).await {
            Ok(Some(Ok(e))) => Some(e),
            Ok(Some(Err(e))) => panic!("event stream broke: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no event within {NEXT_TIMEOUT:?}"),
        }
    }

    /// The next message that is an event of the log (not `retry`-only or a comment).
    pub async fn next_event(&mut self) -> Option<photoq::events::Event> {
        loop {
            let e = self.next().await?;
            if e.event == photoq::events::RESET {
                panic!("unexpected reset: {}", e.data);
            }
            if e.data.is_empty() {
                continue;
            }
            let parsed: photoq::events::Event = serde_json::from_str(&e.data).expect("event JSON");
            assert_eq!(e.id, parsed.id.to_string(), "SSE id is the event id");
            assert_eq!(e.event, parsed.kind, "SSE event name is the type");
            return Some(parsed);
        }
    }
}
