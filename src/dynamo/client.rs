//! Builds the one DynamoDB client a run shares (it is an `Arc` inside; clone it).
//!
//! Region, credentials and endpoint resolve as in the AWS CLI: flags first, then
//! `AWS_PROFILE`, `AWS_REGION`, `AWS_ENDPOINT_URL(_DYNAMODB)`, the shared config
//! files and the default credential chain. The SDK's retries are off: dynbulk's
//! [`crate::capacity::backoff`] (and the lock, and the waits that poll) decide
//! when to try again, so every throttle is seen, metered and paced by dynbulk.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::Client;

/// Where and as whom to connect.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Named profile from the shared config files.
    pub profile: Option<String>,
    /// AWS region.
    pub region: Option<String>,
    /// Endpoint URL (DynamoDB Local, dynalite, a proxy).
    pub endpoint_url: Option<String>,
}

/// Region used when an endpoint URL is given and no region resolves: local
/// DynamoDB servers accept any region, and the AWS CLI user expects this to work.
const LOCAL_DEFAULT_REGION: &str = "us-east-1";

/// Builds the shared client.
///
/// Timeouts are short on purpose: an unreachable endpoint must fail within
/// seconds, not hang (connect 3 s, one attempt 30 s).
///
/// # Errors
/// When no region can be resolved, or the named profile does not exist.
pub async fn build(conn: &Connection) -> Result<Client, String> {
    // The shared config (which credential providers also use) and the
    // DynamoDB client both get the policy.
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts());
    if let Some(profile) = &conn.profile {
        if !profile_exists(profile) {
            return Err(format!(
                "AWS profile {profile:?} is not defined in ~/.aws/config or ~/.aws/credentials; \
                 pass an existing --profile, or configure it with `aws configure --profile {profile}`"
            ));
        }
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &conn.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &conn.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    let mut builder = policy(aws_sdk_dynamodb::config::Builder::from(&config));
    if config.region().is_none() {
        if conn.endpoint_url.is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL").is_some()
        {
            builder = builder.region(Region::new(LOCAL_DEFAULT_REGION));
        } else {
            return Err("no AWS region is configured; pass --region, set AWS_REGION, or set a region in your AWS profile".into());
        }
    }
    Ok(Client::from_conf(builder.build()))
}

/// Applies dynbulk's call policy to a client configuration: SDK retries off
/// (dynbulk's backoff owns retries), connect timeout 3 s, attempt timeout 30 s.
/// Anything that builds a client for dynbulk (tests too) goes through this.
pub fn policy(builder: aws_sdk_dynamodb::config::Builder) -> aws_sdk_dynamodb::config::Builder {
    builder
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts())
}

/// Connect within 3 s, one attempt within 30 s.
fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(30))
        .operation_attempt_timeout(Duration::from_secs(30))
        .build()
}

/// Whether a profile is defined in the shared config or credentials file.
/// The SDK only notices a missing profile at the first request, with an error
/// that does not say which profile; checking up front gives a clear message.
fn profile_exists(profile: &str) -> bool {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let config = std::env::var_os("AWS_CONFIG_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
    let creds = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
    let in_file = |path: Option<std::path::PathBuf>, headers: &[String]| {
        path.and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| {
                text.lines().any(|l| {
                    let l = l.trim();
                    headers.iter().any(|h| {
                        l.strip_prefix('[')
                            .and_then(|r| r.strip_suffix(']'))
                            .map(|inner| {
                                inner.split_whitespace().collect::<Vec<_>>().join(" ") == *h
                            })
                            .unwrap_or(false)
                    })
                })
            })
            .unwrap_or(false)
    };
    let config_headers = if profile == "default" {
        vec!["default".to_string(), "profile default".to_string()]
    } else {
        vec![format!("profile {profile}")]
    };
    in_file(config, &config_headers) || in_file(creds, &[profile.to_string()])
}
