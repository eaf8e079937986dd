//! AWS STS `AssumeRoleWithWebIdentity`, called by Mayfly itself for clients that cannot run
//! an SDK's web-identity flow. The call needs no AWS signature: the token is the proof.

use std::time::Duration;

use serde::Deserialize;

/// Temporary AWS credentials. Secret: never logged or stored.
#[derive(Clone)]
pub struct AwsCredentials {
    /// `AccessKeyId` (an identifier, recorded for correlation with CloudTrail).
    pub access_key_id: String,
    /// `SecretAccessKey`. Secret.
    pub secret_access_key: String,
    /// `SessionToken`. Secret.
    pub session_token: String,
    /// `Expiration`, RFC 3339.
    pub expiration: String,
    /// The assumed role session's ARN.
    pub assumed_role_arn: String,
}

// Hand-written: the secrets never reach a log through `{:?}`.
impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .field("assumed_role_arn", &self.assumed_role_arn)
            .finish_non_exhaustive()
    }
}

/// Why STS gave no credentials.
#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// STS refused, with its error code (`InvalidIdentityToken`, `AccessDenied`, …).
    #[error("AWS STS refused: {code}: {message}")]
    Refused {
        /// STS's error code.
        code: String,
        /// STS's message.
        message: String,
        /// The HTTP status STS answered.
        status: u16,
    },
    /// STS could not be reached or answered something that is not STS's shape.
    #[error("AWS STS is unavailable: {0}")]
    Unavailable(String),
}

/// A client of one STS endpoint.
#[derive(Debug, Clone)]
pub struct StsClient {
    http: reqwest::Client,
}

/// STS answers are small; anything larger is not STS.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

impl StsClient {
    /// A client with a 10-second deadline per call and no redirects.
    pub fn new() -> Result<Self, StsError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StsError::Unavailable(e.to_string()))?;
        Ok(Self { http })
    }

    /// `AssumeRoleWithWebIdentity` at `endpoint`.
    pub async fn assume_role_with_web_identity(
        &self,
        endpoint: &str,
        role_arn: &str,
        session_name: &str,
        web_identity_token: &str,
        duration_secs: u64,
    ) -> Result<AwsCredentials, StsError> {
        let duration = duration_secs.to_string();
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role_arn),
            ("RoleSessionName", session_name),
            ("WebIdentityToken", web_identity_token),
            ("DurationSeconds", duration.as_str()),
        ];
        let resp = self
            .http
            .post(endpoint)
            .form(&form)
            .send()
            .await
            // Without the URL: reqwest's message never holds the form, but keep it short.
            .map_err(|e| StsError::Unavailable(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let body = read_limited(resp).await?;
        parse_answer(status, &body)
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Result<String, StsError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| StsError::Unavailable(e.without_url().to_string()))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(StsError::Unavailable("the answer is larger than STS's".into()));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| StsError::Unavailable("the answer is not UTF-8".into()))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResponse {
    assume_role_with_web_identity_result: AssumeRoleResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResult {
    credentials: Credentials,
    assumed_role_user: AssumedRoleUser,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumedRoleUser {
    arn: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorResponse {
    error: ErrorBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

fn parse_answer(status: u16, body: &str) -> Result<AwsCredentials, StsError> {
    if (200..300).contains(&status) {
        let r: AssumeRoleResponse = quick_xml::de::from_str(body)
            .map_err(|e| StsError::Unavailable(format!("the answer is not STS's: {e}")))?;
        let c = r.assume_role_with_web_identity_result.credentials;
        return Ok(AwsCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.session_token,
            expiration: c.expiration,
            assumed_role_arn: r.assume_role_with_web_identity_result.assumed_role_user.arn,
        });
    }
    match quick_xml::de::from_str::<ErrorResponse>(body) {
        Ok(e) => Err(StsError::Refused {
            code: e.error.code.chars().take(100).collect(),
            message: e.error.message.chars().take(500).collect(),
            status,
        }),
        Err(_) => Err(StsError::Unavailable(format!("STS answered HTTP {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stss_answer_and_its_errors() {
        let ok = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>spiffe://example.org/ci</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/ci/run-1</Arn>
      <AssumedRoleId>AROACLKWSDQRAOEXAMPLE:run-1</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>FwoGZXIvYXdzEXAMPLE</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY</SecretAccessKey>
      <Expiration>2026-12-07T17:00:00Z</Expiration>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
    </Credentials>
    <Provider>mayfly.example.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;
        let c = parse_answer(200, ok).unwrap();
        assert_eq!(c.access_key_id, "ASIAIOSFODNN7EXAMPLE");
        assert_eq!(c.assumed_role_arn, "arn:aws:sts::123456789012:assumed-role/ci/run-1");
        let shown = format!("{c:?}");
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("FwoGZXIv"), "{shown}");

        let refused = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found</Message></Error>
  <RequestId>1</RequestId></ErrorResponse>"#;
        match parse_answer(400, refused) {
            Err(StsError::Refused { code, status, .. }) => {
                assert_eq!((code.as_str(), status), ("InvalidIdentityToken", 400))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_answer(502, "<html>bad gateway</html>"), Err(StsError::Unavailable(_))));
        assert!(matches!(parse_answer(200, "{}"), Err(StsError::Unavailable(_))));
    }
}
