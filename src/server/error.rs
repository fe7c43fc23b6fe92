//! Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP
//! status the issue asks for (400 bad input, 404 unknown model or route, 413 oversized body,
//! 503 starting, failed, shutting down or overloaded, 500 anything else).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// One error answer. `kind` is the OpenAI `type`; `code` a short machine-readable reason.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 for a bad request; `param` names the offending field where one does.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_string),
            code: Some("invalid_value"),
        }
    }

    pub fn model_not_found(model: &str, served: &[String]) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!(
                "the model `{model}` does not exist; this server serves: {}",
                served.join(", ")
            ),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn not_found(path: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!("no route for {path}"),
            param: None,
            code: Some("not_found"),
        }
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 408: the request body did not arrive in time.
    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some("request_timeout"),
        }
    }

    /// 503: the engine is starting, failed to start, or is shutting down.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "service_unavailable_error",
            message: message.into(),
            param: None,
            code: Some("engine_not_ready"),
        }
    }

    /// 503: too many requests in flight (`--max-pending-requests`).
    pub fn overloaded(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "service_unavailable_error",
            message: format!("the server is overloaded: {limit} requests are already in flight; retry later"),
            param: None,
            code: Some("overloaded"),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// The error object alone (what a stream sends when a request fails mid-way).
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// What [`crate::service::Service::submit`] reports, as HTTP: problems with the request (an
/// undecodable image, a prompt over `--max-model-len`, bad sampling values) are 400, an
/// engine that is not ready is 503, anything else is the server's fault.
impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match e {
            Error::Request { field, msg } => ApiError::invalid(format!("{field}: {msg}"), Some(field)),
            Error::Invalid { .. } | Error::Preprocess(_) | Error::Config(_) => ApiError::invalid(e.to_string(), None),
            Error::NotReady(msg) => ApiError::unavailable(msg),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = super::json_response(self.status, &self.body());
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Clients and load balancers back off on Retry-After.
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = ApiError::invalid("n must be 1", Some("n"));
        let v = e.body();
        assert_eq!(v["error"]["message"], "n must be 1");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "n");
        assert_eq!(v["error"]["code"], "invalid_value");
        assert!(ApiError::internal("x").body()["error"]["param"].is_null());
    }

    #[test]
    fn service_errors_map_to_status() {
        let bad: ApiError = Error::invalid("submit", "too many images").into();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        let starting: ApiError = Error::NotReady("still starting".into()).into();
        assert_eq!(starting.status, StatusCode::SERVICE_UNAVAILABLE);
        let pre: ApiError = Error::Preprocess(crate::preprocess::PreprocessError::UnknownImageFormat).into();
        assert_eq!(pre.status, StatusCode::BAD_REQUEST);
    }
}
