//! Requests over `max_message_bytes` answered as what they are.
//!
//! tonic refuses a request larger than the service's decoding limit with `OUT_OF_RANGE`
//! ("decoded message length too large"), but `OUT_OF_RANGE` means an offset outside the log in
//! this API, and a client may read it so. This layer rewrites exactly that answer into
//! `INVALID_ARGUMENT` naming the size and the limit; nothing else is touched. (Not
//! `RESOURCE_EXHAUSTED`: clients retry that as back pressure, and a too-large request fails
//! the same way every time.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What tonic's decoder says of a request over the limit (tonic 0.14, `codec/decode.rs`).
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// The layer; stateless.
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeLayer;

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize { inner }
    }
}

/// The service the layer wraps around the gRPC routes.
#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Oversize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

/// Turns tonic's too-large `OUT_OF_RANGE` into `INVALID_ARGUMENT`, in place.
fn rewrite(headers: &mut http::HeaderMap) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"11");
    if !out_of_range {
        return;
    }
    // grpc-message is percent-encoded (tonic encodes spaces too).
    let message = headers
        .get("grpc-message")
        .map(|m| percent_encoding::percent_decode(m.as_bytes()).decode_utf8_lossy());
    let Some(sizes) = message
        .as_deref()
        .and_then(|m| m.strip_prefix(TONIC_TOO_LARGE))
        .map(parse_sizes)
    else {
        return;
    };
    let (found, limit) = sizes;
    let status = tonic::Status::invalid_argument(format!(
        "request of {found} bytes is larger than the broker's max_message_bytes ({limit} bytes): send smaller requests (one batch is bounded by its topic's max_batch_bytes)"
    ));
    // tonic encodes the status into headers its own way; take them from it.
    let encoded = status.into_http::<tonic::body::Body>();
    for name in ["grpc-status", "grpc-message"] {
        if let Some(value) = encoded.headers().get(name) {
            headers.insert(name, value.clone());
        }
    }
}

/// `("N", "M")` from `"N bytes, the limit is: M bytes"`; `"?"` where a number is missing.
fn parse_sizes(rest: &str) -> (String, String) {
    let number = |text: &str| -> String {
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            "?".into()
        } else {
            digits
        }
    };
    let found = number(rest);
    let limit = rest
        .split_once("the limit is: ")
        .map_or_else(|| "?".into(), |(_, tail)| number(tail));
    (found, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderValue;

    fn message(headers: &http::HeaderMap) -> String {
        let raw = headers["grpc-message"].as_bytes();
        percent_encoding::percent_decode(raw)
            .decode_utf8_lossy()
            .into_owned()
    }

    #[test]
    fn only_the_too_large_out_of_range_is_rewritten() {
        let mut too_large = http::HeaderMap::new();
        too_large.insert("grpc-status", HeaderValue::from_static("11"));
        too_large.insert(
            "grpc-message",
            HeaderValue::from_static(
                "Error,%20decoded%20message%20length%20too%20large:%20found%2067108869%20bytes,%20the%20limit%20is:%2016777216%20bytes",
            ),
        );
        rewrite(&mut too_large);
        assert_eq!(too_large["grpc-status"], "3");
        let message = message(&too_large);
        assert!(
            message.starts_with("request of 67108869 bytes"),
            "{message}"
        );
        assert!(
            message.contains("max_message_bytes (16777216 bytes)"),
            "{message}"
        );

        let mut offset = http::HeaderMap::new();
        offset.insert("grpc-status", HeaderValue::from_static("11"));
        offset.insert(
            "grpc-message",
            HeaderValue::from_static("offset 9 out of range: the log holds offsets 0..3"),
        );
        let before = offset.clone();
        rewrite(&mut offset);
        assert_eq!(offset, before);
    }
}
