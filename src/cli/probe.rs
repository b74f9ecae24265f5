//! `safepoint-gateway probe`: one HTTP GET that exits 0 on a 2xx answer and 1 otherwise,
//! with a one-line reason. It is the container's HEALTHCHECK (deploy/Dockerfile), so the
//! image needs no curl; it works against any of the gateway's probes (`/readyz` by
//! default, `/healthz` for liveness).

use std::process::ExitCode;
use std::time::Duration;

/// The command line of `probe`.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The URL to GET; any 2xx answer is healthy. Redirects are not followed.
    #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
    pub url: String,
    /// How long the whole request may take: e.g. 2s, 500ms, 1m (a bare number is seconds).
    #[arg(long, default_value = "2s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// Parses `2s`, `500ms`, `1m` or `3` (seconds) into a positive duration.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 2s, 500ms or 1m"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("{s:?}: the unit must be ms, s or m")),
    };
    if d.is_zero() {
        return Err("the timeout must be more than 0".into());
    }
    Ok(d)
}

/// Runs the probe: prints one line (stdout when healthy, stderr when not) and returns
/// the exit code, 0 for a 2xx answer and 1 for anything else.
pub fn run(args: &ProbeArgs) -> ExitCode {
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|rt| rt.block_on(check(&args.url, args.timeout)));
    match outcome {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("unhealthy: {}: {reason}", args.url);
            ExitCode::from(1)
        }
    }
}

/// One GET: `Ok` with a line saying so for a 2xx, `Err` with the reason otherwise.
async fn check(url: &str, timeout: Duration) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    // The gateway's own client: it follows no redirect, and never goes through a proxy
    // for loopback (the gateway next to the probe), even where HTTPS_PROXY is set.
    let client = crate::client::Client::new(timeout, Duration::from_secs(1));
    let resp = client
        .request(http::Method::GET, &uri, &[], Vec::new(), timeout, 4096)
        .await
        .map_err(|e| match e {
            crate::client::HttpError::Timeout => format!("no answer within {timeout:?}"),
            e => e.to_string(),
        })?;
    let status = http::StatusCode::from_u16(resp.status)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| resp.status.to_string());
    if (200..300).contains(&resp.status) {
        return Ok(format!("ok: {url} answered {status}"));
    }
    let body = String::from_utf8_lossy(&resp.body);
    let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let body: String = body.chars().take(200).collect();
    Err(if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body}")
    })
}

#[cfg(test)]
mod tests {
    use super::parse_timeout;
    use std::time::Duration;

    #[test]
    fn timeouts_in_the_usual_units() {
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_timeout("3"), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn refuses_zero_negative_and_unknown_units() {
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("-1s").is_err());
        assert!(parse_timeout("2h").is_err());
        assert!(parse_timeout("s").is_err());
        assert!(parse_timeout("").is_err());
    }
}
