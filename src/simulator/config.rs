//! What the simulator can be told: the Loomis side of an onboarding (customers,
//! devices, fault codes), how and when it answers, how it delivers callbacks, and the
//! faults it injects. `SimulatorArgs` is the stand-alone command line; both it and
//! `SimulatorConfig::default()` give the same useful demo.

pub use crate::auth::Secret;
use serde::{Deserialize, Serialize};

use std::net::SocketAddr;
use std::time::Duration;

/// Where ACK and NAK go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    /// In the body of the `200` answering the Dispatch.
    Body,
    /// Later, as a callback; the `200` carries an empty JSON object.
    Callback,
    /// Both: the gateway must treat the second copy as a duplicate.
    Both,
}

impl AckMode {
    /// Whether the ACK/NAK goes into the HTTP response body.
    pub fn in_body(self) -> bool {
        matches!(self, Self::Body | Self::Both)
    }

    /// Whether the ACK/NAK is also sent as a callback.
    pub fn by_callback(self) -> bool {
        matches!(self, Self::Callback | Self::Both)
    }
}

/// How an acknowledged incident ends when nobody cancels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Accept, then Close.
    Close,
    /// Accept, then a Loomis-side Cancel.
    Cancel,
    /// Accept only; the incident stays open (a customer Cancel still works).
    None,
    /// Close without any Accept (the spec allows it: resolved during evaluation).
    CloseBeforeAccept,
}

/// What "down" looks like to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DownMode {
    /// `503` with `Retry-After` (a load balancer in front of a dead backend).
    Unavailable,
    /// The connection is closed without any answer.
    Drop,
}

/// Injected failures. Rates are fractions in `[0, 1]` drawn from the seeded RNG.
/// They apply to the incident path only, never to the `/_sim/` control API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction of requests answered `503` without being processed.
    pub fail_rate: f64,
    /// Fraction of those `503`s that carry `Retry-After: retry_after_secs`.
    pub retry_after_rate: f64,
    /// The `Retry-After` value, in seconds, on `503`s (fail_rate and down).
    pub retry_after_secs: u64,
    /// Fraction of requests held for `hang` and then dropped without an answer.
    pub timeout_rate: f64,
    /// When these faults are applied, be down for this long from that moment (0: up).
    pub down_for_ms: u64,
    /// How the simulator is down.
    pub down_mode: DownMode,
    /// Probability that a delivered callback is sent a second time, right after.
    pub duplicate_callbacks: f64,
    /// Send Close (or Loomis Cancel) before Accept instead of after it.
    pub reorder_callbacks: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            retry_after_rate: 0.5,
            retry_after_secs: 1,
            timeout_rate: 0.0,
            down_for_ms: 0,
            down_mode: DownMode::Unavailable,
            duplicate_callbacks: 0.0,
            reorder_callbacks: false,
        }
    }
}

impl Faults {
    /// Every out-of-range rate, named by its JSON key.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        for (name, rate) in [
            ("fail_rate", self.fail_rate),
            ("retry_after_rate", self.retry_after_rate),
            ("timeout_rate", self.timeout_rate),
            ("duplicate_callbacks", self.duplicate_callbacks),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                p.push((name.to_string(), format!("{rate} is not in [0, 1]")));
            }
        }
        p
    }
}

/// A run-time change to the faults (`POST /_sim/faults`): absent keys keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    /// See [`Faults::fail_rate`].
    pub fail_rate: Option<f64>,
    /// See [`Faults::retry_after_rate`].
    pub retry_after_rate: Option<f64>,
    /// See [`Faults::retry_after_secs`].
    pub retry_after_secs: Option<u64>,
    /// See [`Faults::timeout_rate`].
    pub timeout_rate: Option<f64>,
    /// Down from now for this long; `0` is up again. Absent: the window is untouched.
    pub down_for_ms: Option<u64>,
    /// See [`Faults::down_mode`].
    pub down_mode: Option<DownMode>,
    /// See [`Faults::duplicate_callbacks`].
    pub duplicate_callbacks: Option<f64>,
    /// See [`Faults::reorder_callbacks`]; applies to incidents created afterwards.
    pub reorder_callbacks: Option<bool>,
}

impl FaultsPatch {
    /// The faults after this patch.
    pub fn apply(&self, base: &Faults) -> Faults {
        Faults {
            fail_rate: self.fail_rate.unwrap_or(base.fail_rate),
            retry_after_rate: self.retry_after_rate.unwrap_or(base.retry_after_rate),
            retry_after_secs: self.retry_after_secs.unwrap_or(base.retry_after_secs),
            timeout_rate: self.timeout_rate.unwrap_or(base.timeout_rate),
            down_for_ms: self.down_for_ms.unwrap_or(base.down_for_ms),
            down_mode: self.down_mode.unwrap_or(base.down_mode),
            duplicate_callbacks: self.duplicate_callbacks.unwrap_or(base.duplicate_callbacks),
            reorder_callbacks: self.reorder_callbacks.unwrap_or(base.reorder_callbacks),
        }
    }
}

/// How callbacks are retried: bounded, so a gateway that stays away does not keep
/// the simulator busy forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRetry {
    /// One POST may take this long before it counts as a timeout.
    pub request_timeout: Duration,
    /// The wait after the first failed attempt; doubles each time, with ±20 % jitter.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts (a `Retry-After` is capped to it too).
    pub max_backoff: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Give up when the next attempt would start later than this after the first.
    pub max_elapsed: Duration,
}

impl Default for CallbackRetry {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_attempts: 30,
            max_elapsed: Duration::from_secs(600),
        }
    }
}

impl CallbackRetry {
    /// The un-jittered wait before attempt `attempt + 1`, given `attempt` failures.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Everything the simulator does, in one value. `Default` is a useful demo:
/// any customer, devices `UG1234`, `UG1235` and every `UG2...`, fault codes `AC12`,
/// `AC13`, `DR01`, `LK01`, `PW01`, ACK in the body, Accept 2 s after the ACK, Close
/// 5 s after the Accept, a 4 h SLA, a 24 h duplicate window, no faults.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    /// Known `CustomerNumber`s; empty accepts any. An unknown one is a `400`.
    pub customer_numbers: Vec<String>,
    /// Known devices: exact ids, `PREFIX*`, or `*` for any. Others get `DeviceNotFound`.
    pub devices: Vec<String>,
    /// Known fault codes, same patterns. Others get `InvalidFault`; absent is fine.
    pub fault_codes: Vec<String>,
    /// Bearer token callers must present; `None` accepts anyone.
    pub expect_token: Option<Secret>,
    /// Where callbacks go; `None` until set (callbacks are then dropped and counted).
    pub callback_url: Option<String>,
    /// Bearer token presented on callbacks; `None` sends no `Authorization`.
    pub callback_token: Option<Secret>,
    /// Where ACK and NAK go.
    pub ack: AckMode,
    /// Delay from the ACK to the Accept.
    pub accept_after: Duration,
    /// Delay from the previous message (Accept, or the ACK) to Close or Loomis Cancel.
    pub close_after: Duration,
    /// `SLADateTime` is the Accept's time plus this.
    pub sla: Duration,
    /// How incidents end.
    pub outcome: Outcome,
    /// Confirm a customer Cancel with a Loomis `Cancel` callback.
    pub confirm_customer_cancel: bool,
    /// A reused `IncidentReference` (same `CustomerNumber`) within this window is `Duplicate`.
    pub duplicate_window: Duration,
    /// Add the original `IncidentId` to a `Duplicate` NAK (not in the spec; off by default).
    pub nak_duplicate_with_incident_id: bool,
    /// The first `IncidentId` is `INC` followed by this number.
    pub first_incident_number: u64,
    /// Callback retry bounds.
    pub callback_retry: CallbackRetry,
    /// Faults active from the start.
    pub faults: Faults,
    /// How long a "timed out" request is held before its connection is dropped.
    pub hang: Duration,
    /// Whether a request picked to time out is processed first (as real Loomis may
    /// have done), so that the caller's retry meets a `Duplicate`.
    pub process_before_hang: bool,
    /// RNG seed for every random choice; `None` draws one (logged, and shown in state).
    pub seed: Option<u64>,
    /// How many received requests are kept for `received()`.
    pub max_records: usize,
    /// Larger request bodies are refused with `413`.
    pub max_body_bytes: usize,
}

/// The demo's device list.
pub const DEFAULT_DEVICES: &[&str] = &["UG1234", "UG1235", "UG2*"];
/// The demo's fault codes.
pub const DEFAULT_FAULT_CODES: &[&str] = &["AC12", "AC13", "DR01", "LK01", "PW01"];

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            customer_numbers: Vec::new(),
            devices: DEFAULT_DEVICES.iter().map(|s| s.to_string()).collect(),
            fault_codes: DEFAULT_FAULT_CODES.iter().map(|s| s.to_string()).collect(),
            expect_token: None,
            callback_url: None,
            callback_token: None,
            ack: AckMode::Body,
            accept_after: Duration::from_secs(2),
            close_after: Duration::from_secs(5),
            sla: Duration::from_secs(4 * 3600),
            outcome: Outcome::Close,
            confirm_customer_cancel: true,
            duplicate_window: Duration::from_secs(24 * 3600),
            nak_duplicate_with_incident_id: false,
            first_incident_number: 400_300,
            callback_retry: CallbackRetry::default(),
            faults: Faults::default(),
            hang: Duration::from_secs(15),
            process_before_hang: true,
            seed: None,
            max_records: 100_000,
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl SimulatorConfig {
    /// The built-in simulator's configuration from `[simulator]` of gateway.toml, or
    /// every problem with it (each named by its key), so that the gateway reports them
    /// with the rest of its configuration before it opens anything.
    pub fn from_section(s: &crate::config::SimulatorSection) -> Result<Self, Vec<String>> {
        use clap::ValueEnum;
        let mut sim = SimulatorConfig::default();
        let mut problems = Vec::new();
        if let Some(a) = &s.ack {
            match ValueEnum::from_str(a, true) {
                Ok(v) => sim.ack = v,
                Err(e) => problems.push(format!("simulator.ack: {e}")),
            }
        }
        if let Some(o) = &s.outcome {
            match ValueEnum::from_str(o, true) {
                Ok(v) => sim.outcome = v,
                Err(e) => problems.push(format!("simulator.outcome: {e}")),
            }
        }
        if let Some(ms) = s.accept_after_ms {
            sim.accept_after = Duration::from_millis(ms);
        }
        if let Some(ms) = s.close_after_ms {
            sim.close_after = Duration::from_millis(ms);
        }
        if let Some(d) = &s.devices {
            sim.devices = d.clone();
        }
        if let Some(f) = &s.fault_codes {
            sim.fault_codes = f.clone();
        }
        if let Some(r) = s.fail_rate {
            sim.faults.fail_rate = r;
        }
        if let Some(r) = s.timeout_rate {
            sim.faults.timeout_rate = r;
        }
        problems.extend(sim.problems().into_iter().map(|p| format!("simulator.{p}")));
        if problems.is_empty() {
            Ok(sim)
        } else {
            Err(problems)
        }
    }

    /// Every problem with this configuration, not just the first.
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .faults
            .problems()
            .into_iter()
            .map(|(k, m)| format!("{k}: {m}"))
            .collect();
        if let Some(url) = &self.callback_url {
            if let Err(e) = check_http_url(url) {
                p.push(format!("callback_url: {e}"));
            }
        }
        if self.callback_retry.max_attempts == 0 {
            p.push("callback_retry.max_attempts: must be at least 1".into());
        }
        if self.max_records == 0 {
            p.push("max_records: must be at least 1".into());
        }
        for (name, list) in [
            ("devices", &self.devices),
            ("fault_codes", &self.fault_codes),
        ] {
            if list.iter().any(|s| s.trim().is_empty()) {
                p.push(format!("{name}: contains an empty entry"));
            }
        }
        p
    }
}

pub(crate) fn check_http_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        Ok(u) => Err(format!(
            "{url:?} has scheme {:?}, want http or https",
            u.scheme()
        )),
        Err(e) => Err(format!("{url:?} is not a URL: {e}")),
    }
}

/// Whether `id` matches one of `patterns`: an exact id, `PREFIX*`, or `*`.
pub(crate) fn matches_any(patterns: &[String], id: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => p == id,
    })
}

/// `safepoint-gateway simulator`: a stand-alone Loomis. Tokens come from environment
/// variables, never from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorArgs {
    /// Address to listen on; Dispatch and Cancel are accepted on any path.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Where callbacks (ACK, NAK, Accept, Close, Cancel) are POSTed, e.g.
    /// http://127.0.0.1:8080/v1/loomis/messages. Without it callbacks are dropped.
    #[arg(long)]
    pub callback_url: Option<String>,
    /// Environment variable holding the bearer token presented on callbacks (unset: none).
    #[arg(long, default_value = "LOOMIS_CALLBACK_TOKEN")]
    pub callback_token_env: String,
    /// Environment variable holding the bearer token callers must present (unset: no auth).
    #[arg(long, default_value = "LOOMIS_TOKEN")]
    pub expect_token_env: String,
    /// Where ACK and NAK go.
    #[arg(long, value_enum, default_value_t = AckMode::Body)]
    pub ack: AckMode,
    /// Milliseconds from the ACK to the Accept.
    #[arg(long, default_value_t = 2_000)]
    pub accept_after_ms: u64,
    /// Milliseconds from the Accept (or ACK) to Close or Loomis Cancel.
    #[arg(long, default_value_t = 5_000)]
    pub close_after_ms: u64,
    /// SLA added to the Accept's time for `SLADateTime`, in milliseconds (default 4 h).
    #[arg(long, default_value_t = 4 * 3_600_000)]
    pub sla_ms: u64,
    /// How incidents end.
    #[arg(long, value_enum, default_value_t = Outcome::Close)]
    pub outcome: Outcome,
    /// Known CustomerNumbers, comma-separated (default: any).
    #[arg(long, value_delimiter = ',')]
    pub customers: Vec<String>,
    /// Known devices, comma-separated: exact ids, PREFIX*, or * for any.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_DEVICES.iter().map(|s| s.to_string()))]
    pub devices: Vec<String>,
    /// Known fault codes, comma-separated, same patterns as --devices.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_FAULT_CODES.iter().map(|s| s.to_string()))]
    pub fault_codes: Vec<String>,
    /// Do not confirm a customer Cancel with a Loomis Cancel callback.
    #[arg(long)]
    pub no_cancel_confirm: bool,
    /// Duplicate window for a reused IncidentReference, in milliseconds (default 24 h).
    #[arg(long, default_value_t = 24 * 3_600_000)]
    pub duplicate_window_ms: u64,
    /// Add the original IncidentId to Duplicate NAKs (an extension, not in the spec).
    #[arg(long)]
    pub nak_duplicate_with_incident_id: bool,
    /// Number of the first IncidentId (`INC` followed by it).
    #[arg(long, default_value_t = 400_300)]
    pub first_incident_number: u64,
    /// Fraction of requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Fraction of 503s carrying Retry-After.
    #[arg(long, default_value_t = 0.5)]
    pub retry_after_rate: f64,
    /// Retry-After value in seconds.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Fraction of requests held for --hang-ms and then dropped.
    #[arg(long, default_value_t = 0.0)]
    pub timeout_rate: f64,
    /// How long a timed-out request is held, in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub hang_ms: u64,
    /// Timed-out requests are NOT processed before hanging (default: they are).
    #[arg(long)]
    pub hang_unprocessed: bool,
    /// Be down for this many milliseconds from the start.
    #[arg(long, default_value_t = 0)]
    pub down_for_ms: u64,
    /// What being down looks like.
    #[arg(long, value_enum, default_value_t = DownMode::Unavailable)]
    pub down_mode: DownMode,
    /// Probability that each callback is sent twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_callbacks: f64,
    /// Send Close/Cancel before Accept.
    #[arg(long)]
    pub reorder_callbacks: bool,
    /// RNG seed, for a reproducible run (default: random, logged).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Timeout of one callback POST, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub callback_timeout_ms: u64,
    /// Attempts per callback, the first included.
    #[arg(long, default_value_t = 30)]
    pub callback_max_attempts: u32,
    /// Stop retrying a callback this many milliseconds after its first attempt.
    #[arg(long, default_value_t = 600_000)]
    pub callback_max_elapsed_ms: u64,
    /// Received requests kept in memory.
    #[arg(long, default_value_t = 100_000)]
    pub max_records: usize,
}

impl SimulatorArgs {
    /// Builds the configuration, reading tokens from the named environment variables
    /// and reporting every problem at once.
    pub fn into_config(self) -> Result<SimulatorConfig, String> {
        self.into_config_with_env(|name| std::env::var(name).ok())
    }

    pub(crate) fn into_config_with_env(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<SimulatorConfig, String> {
        let mut problems = Vec::new();
        let mut token = |flag: &str, name: &str| -> Option<Secret> {
            match env(name) {
                None => None,
                Some(v) if v.trim().is_empty() => {
                    problems.push(format!(
                        "{flag}: environment variable {name} is set but empty; unset it or give a token"
                    ));
                    None
                }
                Some(v) => Some(Secret::new(v)),
            }
        };
        let callback_token = token("--callback-token-env", &self.callback_token_env);
        let expect_token = token("--expect-token-env", &self.expect_token_env);
        let config = SimulatorConfig {
            customer_numbers: self.customers,
            devices: self.devices,
            fault_codes: self.fault_codes,
            expect_token,
            callback_url: self.callback_url,
            callback_token,
            ack: self.ack,
            accept_after: Duration::from_millis(self.accept_after_ms),
            close_after: Duration::from_millis(self.close_after_ms),
            sla: Duration::from_millis(self.sla_ms),
            outcome: self.outcome,
            confirm_customer_cancel: !self.no_cancel_confirm,
            duplicate_window: Duration::from_millis(self.duplicate_window_ms),
            nak_duplicate_with_incident_id: self.nak_duplicate_with_incident_id,
            first_incident_number: self.first_incident_number,
            callback_retry: CallbackRetry {
                request_timeout: Duration::from_millis(self.callback_timeout_ms),
                max_attempts: self.callback_max_attempts,
                max_elapsed: Duration::from_millis(self.callback_max_elapsed_ms),
                ..CallbackRetry::default()
            },
            faults: Faults {
                fail_rate: self.fail_rate,
                retry_after_rate: self.retry_after_rate,
                retry_after_secs: self.retry_after_secs,
                timeout_rate: self.timeout_rate,
                down_for_ms: self.down_for_ms,
                down_mode: self.down_mode,
                duplicate_callbacks: self.duplicate_callbacks,
                reorder_callbacks: self.reorder_callbacks,
            },
            hang: Duration::from_millis(self.hang_ms),
            process_before_hang: !self.hang_unprocessed,
            seed: self.seed,
            max_records: self.max_records,
            max_body_bytes: SimulatorConfig::default().max_body_bytes,
        };
        // Name the flag, not the config field: `callback_retry.max_attempts: ...` is
        // `--callback-max-attempts: ...` here.
        problems.extend(config.problems().into_iter().map(|p| {
            let (field, message) = p.split_once(':').unwrap_or((&p, ""));
            let flag = field
                .replace("callback_retry.", "callback_")
                .replace('_', "-");
            format!("--{flag}:{message}")
        }));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimulatorArgs,
    }

    fn parse(args: &[&str]) -> SimulatorArgs {
        Cli::try_parse_from(std::iter::once("sim").chain(args.iter().copied()))
            .unwrap()
            .sim
    }

    #[test]
    fn command_line_defaults_equal_config_default() {
        let config = parse(&[]).into_config_with_env(|_| None).unwrap();
        assert_eq!(config, SimulatorConfig::default());
        assert_eq!(parse(&[]).listen.to_string(), "127.0.0.1:8090");
    }

    #[test]
    fn tokens_come_from_the_named_variables() {
        let config = parse(&["--expect-token-env", "MY_TOKEN"])
            .into_config_with_env(|n| match n {
                "MY_TOKEN" => Some("in".into()),
                "LOOMIS_CALLBACK_TOKEN" => Some("out".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.expect_token, Some(Secret::new("in")));
        assert_eq!(config.callback_token, Some(Secret::new("out")));
        assert_eq!(format!("{:?}", config.expect_token), "Some(Secret(***))");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = parse(&[
            "--fail-rate",
            "1.5",
            "--duplicate-callbacks=-0.1",
            "--callback-url",
            "ftp://x",
            "--callback-max-attempts",
            "0",
        ])
        .into_config_with_env(|n| (n == "LOOMIS_TOKEN").then(String::new))
        .unwrap_err();
        for want in [
            "--fail-rate",
            "--duplicate-callbacks",
            "--callback-url",
            "--callback-max-attempts",
            "LOOMIS_TOKEN",
        ] {
            assert!(err.contains(want), "{want} not in {err}");
        }
    }

    #[test]
    fn lists_and_enums_parse() {
        let a = parse(&[
            "--devices",
            "A1,B*",
            "--ack",
            "both",
            "--outcome",
            "close-before-accept",
            "--down-mode",
            "drop",
        ]);
        assert_eq!(a.devices, vec!["A1", "B*"]);
        assert_eq!(a.ack, AckMode::Both);
        assert_eq!(a.outcome, Outcome::CloseBeforeAccept);
        assert_eq!(a.down_mode, DownMode::Drop);
    }

    #[test]
    fn patterns_match_exact_prefix_and_any() {
        let p: Vec<String> = DEFAULT_DEVICES.iter().map(|s| s.to_string()).collect();
        assert!(matches_any(&p, "UG1234"));
        assert!(matches_any(&p, "UG2999"));
        assert!(!matches_any(&p, "UG12345"));
        assert!(!matches_any(&p, "XX1"));
        assert!(matches_any(&["*".to_string()], "anything"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = CallbackRetry {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..CallbackRetry::default()
        };
        assert_eq!(r.backoff(1), Duration::from_millis(100));
        assert_eq!(r.backoff(2), Duration::from_millis(200));
        assert_eq!(r.backoff(3), Duration::from_millis(350));
        assert_eq!(r.backoff(99), Duration::from_millis(350));
    }

    #[test]
    fn faults_patch_keeps_absent_keys_and_rejects_unknown() {
        let base = Faults {
            fail_rate: 0.3,
            ..Faults::default()
        };
        let patch: FaultsPatch = serde_json::from_str(r#"{"timeout_rate":0.1}"#).unwrap();
        let f = patch.apply(&base);
        assert_eq!((f.fail_rate, f.timeout_rate), (0.3, 0.1));
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"fail":1}"#).is_err());
    }
}
