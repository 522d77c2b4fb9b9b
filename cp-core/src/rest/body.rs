//! Request bodies: size limit, content type (JSON or YAML), parsed into a JSON value.
//!
//! In: the raw request. Out: a `serde_json::Value`, or 413/415/400.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use serde_json::Value;

use super::errors::ApiError;

/// Reads and parses a body of at most `limit` bytes.
pub async fn read_value(headers: &HeaderMap, body: Body, limit: usize) -> Result<Value, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let media = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let yaml = match media.as_deref() {
        Some("application/json") => false,
        Some("application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml") => true,
        _ => {
            // Read what was sent before answering: a connection closed with the request
            // unread is reset, and a client still sending it may lose the answer as well.
            let _ = axum::body::to_bytes(body, limit).await;
            return Err(ApiError::unsupported_media_type(content_type));
        }
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::too_large(limit))?;
    if yaml {
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
        serde_yaml::from_str(text).map_err(|e| ApiError::bad_request(format!("body is not valid YAML: {e}")))
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A refused body is read before the answer, so the connection serves the next request.
    #[tokio::test]
    async fn a_body_of_the_wrong_type_is_refused_and_the_connection_stays_usable() {
        let app = axum::Router::new().route(
            "/",
            axum::routing::put(|headers: axum::http::HeaderMap, body: axum::body::Body| async move {
                match super::read_value(&headers, body, 1 << 20).await {
                    Ok(_) => "ok".to_string(),
                    Err(_) => "refused".to_string(),
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let body = "x".repeat(64 * 1024);
        let refused = format!("PUT / HTTP/1.1\r\nhost: a\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        let accepted = "PUT / HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        stream.write_all(format!("{refused}{accepted}").as_bytes()).await.unwrap();
        let mut answers = String::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !answers.contains("ok") {
            let read = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await.expect("both answers within 10 s").unwrap();
            assert!(read > 0, "the connection closed after: {answers}");
            answers.push_str(&String::from_utf8_lossy(&buf[..read]));
        }
        assert!(answers.contains("refused"), "{answers}");
    }
}
