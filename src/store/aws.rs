//! Shared AWS SDK configuration: the default credential chain with standard retries
//! (throttling and 5xx back off) and bounded connect and attempt timeouts.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;

/// Loads the SDK config for `region` (the environment's when `None`).
pub async fn sdk_config(
    region: Option<&str>,
    max_attempts: u32,
    max_backoff: Duration,
    attempt_timeout: Duration,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(max_attempts)
                .with_initial_backoff(Duration::from_millis(200))
                .with_max_backoff(max_backoff),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(attempt_timeout)
                .build(),
        );
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    loader.load().await
}

/// Log targets that print credentials when verbose, with the most each may log whatever
/// `TIDEMARK_LOG` asks: the signer (trace: signing parameters with the identity), the
/// orchestrator (trace: each request with its Authorization and security-token headers;
/// its auth and endpoint steps, debug: the resolved identity and endpoint parameters holding
/// the credentials) and profile loading (info: the credentials it loaded).
pub const CREDENTIAL_TARGETS: &[(&str, tracing::Level)] = &[
    ("aws_sigv4", tracing::Level::INFO),
    ("aws_smithy_runtime", tracing::Level::DEBUG),
    ("aws_smithy_runtime::client::orchestrator::auth", tracing::Level::INFO),
    ("aws_smithy_runtime::client::orchestrator::endpoints", tracing::Level::INFO),
    ("aws_smithy_runtime_api", tracing::Level::DEBUG),
    ("aws_smithy_http_client", tracing::Level::DEBUG),
    ("aws_runtime", tracing::Level::DEBUG),
    ("aws_credential_types", tracing::Level::WARN),
    ("aws_config::profile", tracing::Level::WARN),
    ("hyper", tracing::Level::DEBUG),
    ("hyper_util", tracing::Level::DEBUG),
    ("h2", tracing::Level::DEBUG),
];

/// A log filter that holds [`CREDENTIAL_TARGETS`] to their caps and passes everything else;
/// combined with the user's filter it cannot be loosened from the environment.
pub fn credential_cap() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::TRACE)
        .with_targets(CREDENTIAL_TARGETS.iter().copied())
}

/// What a redacted value is replaced with.
const REDACTED: &str = "<redacted>";

/// Text after which a credential follows, and the bytes that end it.
const CREDENTIAL_MARKERS: &[(&str, &[u8])] = &[
    // Authorization header and presigned URLs (X-Amz-Credential): the access key id.
    ("Credential=", b"/,&\" \t\r\n"),
    ("access_key_id: \"", b"\""),
    ("session_token: \"", b"\""),
    ("x-amz-security-token\": \"", b"\""),
    ("X-Amz-Security-Token=", b"&\" \t\r\n"),
];

/// Prefixes of AWS access key ids (and other IAM unique ids): 4 letters, then 16 of [A-Z0-9].
const KEY_ID_PREFIXES: &[&[u8; 4]] =
    &[b"AKIA", b"ASIA", b"ABIA", b"ACCA", b"AGPA", b"AIDA", b"AIPA", b"ANPA", b"ANVA", b"APKA", b"AROA"];

fn key_id_at(b: &[u8], i: usize) -> bool {
    let Some(word) = b.get(i..i + 20) else {
        return false;
    };
    let boundary = |c: Option<&u8>| !c.is_some_and(|c| c.is_ascii_alphanumeric());
    KEY_ID_PREFIXES.iter().any(|p| word.starts_with(&p[..]))
        && word[4..].iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && boundary(if i == 0 { None } else { b.get(i - 1) })
        && boundary(b.get(i + 20))
}

/// `text` with access key ids and session tokens replaced: the backstop for a target that
/// prints them and is not in [`CREDENTIAL_TARGETS`] (pure).
pub fn redact_credentials(text: &str) -> std::borrow::Cow<'_, str> {
    let b = text.as_bytes();
    let (mut out, mut copied, mut i) = (String::new(), 0, 0);
    while i < b.len() {
        // Markers and key ids are ASCII, so every cut below is on a char boundary.
        if let Some((m, stops)) = CREDENTIAL_MARKERS.iter().find(|(m, _)| b[i..].starts_with(m.as_bytes())) {
            let start = i + m.len();
            let end = b[start..].iter().position(|c| stops.contains(c)).map_or(b.len(), |p| start + p);
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            (copied, i) = (end, end);
            continue;
        }
        if key_id_at(b, i) {
            out.push_str(&text[copied..i]);
            out.push_str(REDACTED);
            i += 20;
            copied = i;
            continue;
        }
        i += 1;
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Stderr for logs, through [`redact_credentials`]. The formatter writes each event with
/// one call, so a credential is never split across two writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact_credentials(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingStderr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_key_ids_and_tokens_are_redacted() {
        let cases = [
            (
                "authorization: \"AWS4-HMAC-SHA256 Credential=testing/20261201/us-east-1/s3/aws4_request, SignedHeaders=host\"",
                "authorization: \"AWS4-HMAC-SHA256 Credential=<redacted>/20261201/us-east-1/s3/aws4_request, SignedHeaders=host\"",
            ),
            (
                "Credentials { provider_name: \"Environment\", access_key_id: \"testing\", secret_access_key: \"** redacted **\" }",
                "Credentials { provider_name: \"Environment\", access_key_id: \"<redacted>\", secret_access_key: \"** redacted **\" }",
            ),
            ("key AKIATIDEMARKTESTKEY1 used", "key <redacted> used"),
            ("(ASIAABCDEFGHIJKLMNOP)", "(<redacted>)"),
            ("{\"x-amz-security-token\": \"IQoJb3JpZ2lu\"}", "{\"x-amz-security-token\": \"<redacted>\"}"),
            ("?X-Amz-Security-Token=abc&X-Amz-Credential=AKIA%2F", "?X-Amz-Security-Token=<redacted>&X-Amz-Credential=<redacted>"),
            ("trailing Credential=", "trailing Credential=<redacted>"),
        ];
        for (text, want) in cases {
            assert_eq!(redact_credentials(text), want, "{text}");
        }
        // Not key ids: too short, too long, lowercase, inside a longer word; and no copy made.
        for text in
            ["AKIA123", "AKIATIDEMARKTESTKEY12", "akiatidemarktestkey1", "XAKIATIDEMARKTESTKEY1", "plain ünïcode line"]
        {
            assert!(matches!(redact_credentials(text), std::borrow::Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn credential_targets_are_capped_whatever_the_user_filter() {
        let cap = credential_cap();
        for (target, level) in [
            ("aws_sigv4::http_request::sign", tracing::Level::TRACE),
            ("aws_smithy_runtime::client::orchestrator::auth", tracing::Level::TRACE),
            ("aws_config::profile::credentials", tracing::Level::INFO),
            ("aws_smithy_runtime::client::orchestrator::endpoints", tracing::Level::DEBUG),
            ("aws_smithy_runtime::client::orchestrator::auth", tracing::Level::DEBUG),
        ] {
            assert!(!cap.would_enable(target, &level), "{target} at {level}");
        }
        for (target, level) in [
            ("tidemark::archive::fetch", tracing::Level::TRACE),
            ("aws_smithy_runtime::client::orchestrator", tracing::Level::DEBUG),
            ("aws_config::meta::credentials::chain", tracing::Level::INFO),
            ("aws_sigv4", tracing::Level::WARN),
        ] {
            assert!(cap.would_enable(target, &level), "{target} at {level}");
        }
    }
}
