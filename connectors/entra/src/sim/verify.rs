//! Checks a client assertion the way Entra does, and renders Entra's error envelope.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use crate::assertion::{AssertionClaims, CertificateInfo};

/// A refusal in Entra's words: HTTP status, OAuth `error`, `AADSTS` number and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) error: &'static str,
    pub(crate) code: u32,
    pub(crate) message: String,
}

impl Rejection {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        code: u32,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            code,
            message: message.into(),
        }
    }

    /// 401 `invalid_client`, what Entra answers for every credential problem.
    pub(crate) fn invalid_client(code: u32, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", code, message)
    }

    /// 400 `invalid_request` for a missing form parameter (AADSTS900144).
    pub(crate) fn missing_parameter(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let trace_id = uuid::Uuid::new_v4();
        let correlation_id = uuid::Uuid::new_v4();
        let timestamp = format_timestamp(SystemTime::now());
        let description = format!(
            "AADSTS{}: {} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}",
            self.code, self.message
        );
        let body = serde_json::json!({
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        (self.status, Json(body)).into_response()
    }
}

/// Verifies `assertion` against the registered certificate: algorithm and thumbprint header,
/// signature, `aud` (one of `audiences`), `iss` = `sub` = `client_id`, `exp`/`nbf` (60 s leeway)
/// and the presence of `jti`. Replay is checked by the caller, which owns the `jti` store.
pub(crate) fn verify_assertion(
    certificate: &CertificateInfo,
    assertion: &str,
    client_id: &str,
    audiences: &[String],
) -> Result<AssertionClaims, Rejection> {
    let malformed =
        || Rejection::invalid_client(50027, "Invalid JWT token. Token format not valid.");
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
    let (expected, presented, name) = match header.alg {
        Algorithm::PS256 => (
            certificate.x5t_s256(),
            header.x5t_s256.as_deref(),
            "x5t#S256",
        ),
        Algorithm::RS256 => (certificate.x5t(), header.x5t.as_deref(), "x5t"),
        other => {
            return Err(Rejection::invalid_client(
                5002730,
                format!(
                "Invalid JWT token. Unsupported signing algorithm '{other:?}'; use PS256 or RS256."
            ),
            ))
        }
    };
    match presented {
        Some(thumbprint) if thumbprint == expected => {}
        Some(thumbprint) => {
            return Err(Rejection::invalid_client(
                700027,
                format!(
                    "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}']"
                ),
            ))
        }
        None => {
            return Err(Rejection::invalid_client(
                700027,
                format!("Client assertion header has no '{name}' thumbprint for alg {:?}.", header.alg),
            ))
        }
    }

    let mut validation = Validation::new(header.alg);
    validation.set_audience(audiences);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.to_owned());
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<AssertionClaims>(
        assertion,
        &certificate.decoding_key(),
        &validation,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => {
            Rejection::invalid_client(700027, "Client assertion failed signature validation.")
        }
        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => Rejection::invalid_client(
            700024,
            "Client assertion is not within its valid time range.",
        ),
        ErrorKind::InvalidAudience => Rejection::invalid_client(
            700212,
            format!(
                "Client assertion audience claim does not match the token endpoint; expected '{}'.",
                audiences.first().map_or("", String::as_str)
            ),
        ),
        ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => Rejection::invalid_client(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ),
        ErrorKind::MissingRequiredClaim(claim) => Rejection::invalid_client(
            50027,
            format!("Invalid JWT token. The '{claim}' claim is missing."),
        ),
        _ => malformed(),
    })?;
    if data.claims.jti.as_deref().is_none_or(str::is_empty) {
        return Err(Rejection::invalid_client(
            50027,
            "Invalid JWT token. The 'jti' claim is missing.",
        ));
    }
    Ok(data.claims)
}

/// `2025-01-31 12:34:56Z`, the format of Entra's `timestamp`.
fn format_timestamp(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamp_matches_the_civil_calendar() {
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661);
        assert_eq!(format_timestamp(leap_day), "2000-02-29 01:01:01Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(format_timestamp(later), "2024-12-31 23:59:59Z");
    }
}
