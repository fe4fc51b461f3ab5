//! Errors as OpenAI's API returns them: an HTTP status and
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A request that could not be served.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error type: `invalid_request_error`, `rate_limit_error`, `server_error`, ...
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds a client should wait before retrying (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    /// 400 naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400 about the request as a whole (the body is not JSON, ...).
    pub fn bad_body(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn not_found(param: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            param: param.map(str::to_string),
            code: Some(if param == Some("model") { "model_not_found" } else { "not_found" }),
            ..ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
        }
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than this server's limit of {limit} bytes"),
        )
    }

    /// 401 as OpenAI answers a missing or wrong key.
    pub fn unauthorized(given: bool) -> ApiError {
        let message = if given {
            "Incorrect API key provided. Give one of this server's keys as `Authorization: Bearer KEY`."
        } else {
            "You didn't provide an API key. Give one of this server's keys as `Authorization: Bearer KEY`."
        };
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
        }
    }

    /// 403 for a `Host` this server does not answer to (DNS rebinding).
    pub fn forbidden_host(host: Option<String>) -> ApiError {
        let shown = host.map_or_else(|| "no Host header".to_string(), |h| format!("Host {h:?}"));
        ApiError {
            code: Some("host_not_allowed"),
            param: Some("Host".into()),
            ..ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                format!("{shown} is not one this server answers to (--allowed-host)"),
            )
        }
    }

    /// 415 for a POST whose body is not declared JSON.
    pub fn unsupported_media_type(given: Option<String>) -> ApiError {
        let shown = given.map_or_else(|| "no Content-Type header".to_string(), |t| format!("Content-Type {t:?}"));
        ApiError {
            code: Some("unsupported_media_type"),
            param: Some("Content-Type".into()),
            ..ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                format!("{shown}: the body must be sent as `Content-Type: application/json`"),
            )
        }
    }

    /// 408 for a body that did not arrive in time.
    pub fn body_timeout(seconds: f64) -> ApiError {
        ApiError {
            code: Some("timeout"),
            ..ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!("the request body did not arrive within {seconds} s (--header-timeout-s)"),
            )
        }
    }

    pub fn queue_full(max_queue: usize) -> ApiError {
        ApiError {
            retry_after: Some(1),
            code: Some("queue_full"),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("{max_queue} requests are already waiting; retry later"),
            )
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message) }
    }

    pub fn timeout(seconds: f64) -> ApiError {
        ApiError {
            code: Some("timeout"),
            ..ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                format!("the request did not finish within the server's {seconds} s request timeout"),
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The metrics label of the outcome.
    pub fn outcome(&self) -> &'static str {
        ApiError::outcome_of(self.status)
    }

    /// The metrics label of a response's status.
    pub fn outcome_of(status: StatusCode) -> &'static str {
        match status.as_u16() {
            200..=299 => "ok",
            401 | 403 => "unauthorized",
            400 | 404 | 405 | 408 | 413 | 415 => "invalid",
            429 => "rejected",
            503 => "unavailable",
            504 => "timeout",
            _ => "error",
        }
    }

    /// `{"error": {...}}`.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
